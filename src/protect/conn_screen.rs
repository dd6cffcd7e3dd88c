//! The engine's answer to the accept loop ([`ConnScreen`]): a connection from
//! an address DDoS protection has blocked is closed before any HTTP is read
//! (an attacker gets no answer to parse), and while under attack, connections
//! beyond what the gateway can serve are shed with a 503. Blacklisted
//! addresses and violation blocks still get their 403 with a JSON body, as
//! SPEC.md promises, so they are left to the request path.

use std::net::IpAddr;
use std::sync::Arc;

use crate::engine::Engine;
use crate::protect::blocks::BlockReason;
use crate::protect::ddos::Event;
use crate::protect::lists::ListMatch;
use crate::server::{Admission, ConnScreen, ConnSettings};

/// How long a shed client is asked to wait.
const SHED_RETRY_AFTER_SECS: u64 = 5;

pub struct EngineScreen {
    pub engine: Arc<Engine>,
}

impl EngineScreen {
    /// A peer that is one of `trusted_proxies` speaks for others: what its
    /// clients did must not close it.
    fn speaks_for_itself(&self, peer: IpAddr) -> bool {
        let snapshot = self.engine.snapshot();
        !snapshot
            .config
            .global
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }
}

impl ConnScreen for EngineScreen {
    fn admit(&self, peer: IpAddr, open: u64, settings: &ConnSettings) -> Admission {
        let now = self.engine.now();
        if let Some(ListMatch::Whitelisted) = self.engine.lists().lookup(peer, now) {
            return Admission::Serve;
        }
        let ddos = self.engine.ddos();
        // Under attack, the connections the gateway takes shrink with the
        // limits, whoever the peer is: this is about capacity.
        if let Some(factor) = ddos.as_deref().and_then(|g| g.limit_factor()) {
            let room = (settings.max_connections as f64 * factor) as u64;
            if open >= room {
                return Admission::Shed {
                    retry_after_secs: SHED_RETRY_AFTER_SECS,
                };
            }
        }
        if !self.speaks_for_itself(peer) {
            return Admission::Serve;
        }
        let Some(guard) = ddos.as_deref() else {
            return Admission::Serve;
        };
        let blocks = self.engine.blocks();
        if blocks.is_empty() {
            return Admission::Serve;
        }
        let (address, prefix) = guard.identities(peer);
        let blocked = std::iter::once(&address)
            .chain(prefix.as_ref())
            .filter_map(|id| blocks.active(id, now))
            .any(|block| block.reason == BlockReason::Ddos);
        if blocked {
            Admission::Refuse
        } else {
            Admission::Serve
        }
    }

    fn guard_event(&self, peer: IpAddr) {
        if self.speaks_for_itself(peer) {
            self.engine.record_ddos_event(peer, Event::Guard);
        }
    }
}

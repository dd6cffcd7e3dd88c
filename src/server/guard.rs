//! Connection caps: the gateway-wide `max_connections` and the per-address
//! `max_connections_per_ip`. A permit is held for the life of a connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::ConnSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_ip` reached for this address.
    PerIp,
}

#[derive(Debug, Default)]
pub struct ConnTracker {
    open: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
}

/// Released when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    tracker: Arc<ConnTracker>,
    ip: IpAddr,
}

impl ConnTracker {
    pub fn new() -> Arc<ConnTracker> {
        Arc::new(ConnTracker::default())
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &ConnSettings,
    ) -> Result<ConnPermit, Rejected> {
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip.lock();
        if self.open.load(Ordering::Relaxed) >= settings.max_connections {
            return Err(Rejected::Total);
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= settings.max_connections_per_ip {
            return Err(Rejected::PerIp);
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnPermit {
            tracker: Arc::clone(self),
            ip,
        })
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn open_from(&self, ip: IpAddr) -> u64 {
        self.per_ip
            .lock()
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self.tracker.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Keep the map as small as the set of connected addresses.
                per_ip.remove(&self.ip);
            }
        }
        self.tracker.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(total: u64, per_ip: u64) -> ConnSettings {
        ConnSettings {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_connections: total,
            max_connections_per_ip: per_ip,
        }
    }

    #[test]
    fn caps_hold_per_address_and_in_total_and_permits_give_back() {
        let tracker = ConnTracker::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s = settings(3, 2);
        let p1 = tracker.try_acquire(a, &s).unwrap();
        let _p2 = tracker.try_acquire(a, &s).unwrap();
        assert_eq!(tracker.try_acquire(a, &s).unwrap_err(), Rejected::PerIp);
        let _p3 = tracker.try_acquire(b, &s).unwrap();
        assert_eq!(tracker.try_acquire(b, &s).unwrap_err(), Rejected::Total);
        drop(p1);
        assert_eq!(tracker.open_from(a), 1);
        assert!(tracker.try_acquire(a, &s).is_ok());
        // An IPv4-mapped IPv6 peer is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        assert_eq!(tracker.open_from(mapped), 1);
    }
}

//! The whitelist and blacklist: IPv4/IPv6 addresses and CIDR blocks, from the
//! config or added at run time with an optional expiry. The most specific
//! entry (longest prefix) wins; on a tie, the blacklist.
//!
//! Lookups are lock-free (one `ArcSwap` load) and cost one hash probe per
//! distinct prefix length in use; changes, which are rare, copy the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::Serialize;

use crate::limit::Nanos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Whitelist,
    Blacklist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntrySource {
    /// From the config file: replaced on every reload.
    Config,
    /// Added through the admin API: kept across reloads until removed or expired.
    Runtime,
}

/// An answer for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListMatch {
    Whitelisted,
    /// With the entry's expiry, `None` for a permanent entry.
    Blacklisted {
        expires: Option<Nanos>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    pub net: IpNet,
    pub kind: ListKind,
    pub expires: Option<Nanos>,
    pub source: EntrySource,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("\"{0}\" is not an IP address or CIDR block")]
    BadEntry(String),
}

/// Parses `1.2.3.4`, `2001:db8::1`, `203.0.113.0/24` (host bits are cleared).
pub fn parse_entry(text: &str) -> Result<IpNet, ListError> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(canonical_net(net).trunc());
    }
    text.parse::<IpAddr>()
        .map(|ip| canonical_net(IpNet::from(ip)))
        .map_err(|_| ListError::BadEntry(text.to_string()))
}

/// An IPv4-mapped IPv6 block is stored as the IPv4 block it means.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    white: Option<ListEntry>,
    black: Option<ListEntry>,
}

/// One immutable generation of the lists.
#[derive(Debug, Clone, Default)]
struct Table {
    /// (is_v6, prefix length, masked address bits) → entries.
    slots: HashMap<(bool, u8, u128), Slot>,
    /// Prefix lengths in use, longest first.
    v4_lengths: Vec<u8>,
    v6_lengths: Vec<u8>,
}

fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (false, u32::from(v4) as u128),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

fn mask(is_v6: bool, bits: u128, len: u8) -> u128 {
    let width = if is_v6 { 128 } else { 32 };
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (width - len as u32))
            & if is_v6 { u128::MAX } else { u32::MAX as u128 }
    }
}

impl Table {
    fn slot_key(net: &IpNet) -> (bool, u8, u128) {
        let (is_v6, addr) = bits(net.network());
        (is_v6, net.prefix_len(), mask(is_v6, addr, net.prefix_len()))
    }

    fn insert(&mut self, entry: ListEntry) {
        let slot = self.slots.entry(Self::slot_key(&entry.net)).or_default();
        match entry.kind {
            ListKind::Whitelist => slot.white = Some(entry),
            ListKind::Blacklist => slot.black = Some(entry),
        }
        self.reindex();
    }

    fn remove(&mut self, net: &IpNet, kind: ListKind, source: Option<EntrySource>) -> bool {
        let key = Self::slot_key(net);
        let Some(slot) = self.slots.get_mut(&key) else {
            return false;
        };
        let field = match kind {
            ListKind::Whitelist => &mut slot.white,
            ListKind::Blacklist => &mut slot.black,
        };
        let matches = field
            .as_ref()
            .is_some_and(|e| source.is_none_or(|s| e.source == s));
        if matches {
            *field = None;
        }
        if slot.white.is_none() && slot.black.is_none() {
            self.slots.remove(&key);
        }
        self.reindex();
        matches
    }

    fn reindex(&mut self) {
        let mut v4: Vec<u8> = Vec::new();
        let mut v6: Vec<u8> = Vec::new();
        for (is_v6, len, _) in self.slots.keys() {
            let lengths = if *is_v6 { &mut v6 } else { &mut v4 };
            if !lengths.contains(len) {
                lengths.push(*len);
            }
        }
        v4.sort_unstable_by(|a, b| b.cmp(a));
        v6.sort_unstable_by(|a, b| b.cmp(a));
        self.v4_lengths = v4;
        self.v6_lengths = v6;
    }

    fn lookup(&self, ip: IpAddr, now: Nanos) -> Option<ListMatch> {
        let (is_v6, addr) = bits(ip.to_canonical());
        let lengths = if is_v6 {
            &self.v6_lengths
        } else {
            &self.v4_lengths
        };
        let live = |e: &Option<ListEntry>| {
            e.as_ref()
                .filter(|e| e.expires.is_none_or(|t| t > now))
                .cloned()
        };
        for &len in lengths {
            let Some(slot) = self.slots.get(&(is_v6, len, mask(is_v6, addr, len))) else {
                continue;
            };
            if let Some(black) = live(&slot.black) {
                return Some(ListMatch::Blacklisted {
                    expires: black.expires,
                });
            }
            if live(&slot.white).is_some() {
                return Some(ListMatch::Whitelisted);
            }
        }
        None
    }

    fn entries(&self, now: Nanos) -> Vec<ListEntry> {
        let mut all: Vec<ListEntry> = self
            .slots
            .values()
            .flat_map(|slot| [slot.white.clone(), slot.black.clone()])
            .flatten()
            .filter(|e| e.expires.is_none_or(|t| t > now))
            .collect();
        all.sort_by_key(|e| (e.kind as u8, e.net));
        all
    }
}

/// The live lists, shared by every front end.
#[derive(Debug, Default)]
pub struct Lists {
    table: ArcSwap<Table>,
    // Serialises writers; readers never wait.
    write: parking_lot::Mutex<()>,
}

impl Lists {
    pub fn new() -> Lists {
        Lists::default()
    }

    pub fn lookup(&self, ip: IpAddr, now: Nanos) -> Option<ListMatch> {
        let table = self.table.load();
        if table.slots.is_empty() {
            return None;
        }
        table.lookup(ip, now)
    }

    fn update(&self, change: impl FnOnce(&mut Table) -> bool) -> bool {
        let _writer = self.write.lock();
        let mut next = Table::clone(&self.table.load());
        let changed = change(&mut next);
        if changed {
            self.table.store(Arc::new(next));
        }
        changed
    }

    /// Adds (or replaces) an entry made at run time.
    pub fn add(&self, net: IpNet, kind: ListKind, expires: Option<Nanos>) {
        self.update(|table| {
            table.insert(ListEntry {
                net,
                kind,
                expires,
                source: EntrySource::Runtime,
            });
            true
        });
    }

    /// Removes an entry, whatever its source; false when there was none.
    pub fn remove(&self, net: &IpNet, kind: ListKind) -> bool {
        self.update(|table| table.remove(net, kind, None))
    }

    /// Replaces the config's entries (on load and reload); run-time entries stay,
    /// and a run-time entry for the same block as a config entry takes precedence.
    pub fn set_config_entries(&self, whitelist: &[IpNet], blacklist: &[IpNet]) {
        self.update(|table| {
            let old: Vec<ListEntry> = table
                .entries(0)
                .into_iter()
                .filter(|e| e.source == EntrySource::Config)
                .collect();
            for entry in old {
                table.remove(&entry.net, entry.kind, Some(EntrySource::Config));
            }
            for (nets, kind) in [
                (whitelist, ListKind::Whitelist),
                (blacklist, ListKind::Blacklist),
            ] {
                for net in nets {
                    let net = canonical_net(*net).trunc();
                    let key = Table::slot_key(&net);
                    let taken = table.slots.get(&key).is_some_and(|slot| match kind {
                        ListKind::Whitelist => slot.white.is_some(),
                        ListKind::Blacklist => slot.black.is_some(),
                    });
                    if !taken {
                        table.insert(ListEntry {
                            net,
                            kind,
                            expires: None,
                            source: EntrySource::Config,
                        });
                    }
                }
            }
            true
        });
    }

    /// Every live entry, whitelist first.
    pub fn entries(&self, now: Nanos) -> Vec<ListEntry> {
        self.table.load().entries(now)
    }

    /// Drops expired entries so they stop costing lookups.
    pub fn prune(&self, now: Nanos) -> usize {
        let expired: Vec<ListEntry> = {
            let table = self.table.load();
            table
                .slots
                .values()
                .flat_map(|s| [s.white.clone(), s.black.clone()])
                .flatten()
                .filter(|e| e.expires.is_some_and(|t| t <= now))
                .collect()
        };
        if expired.is_empty() {
            return 0;
        }
        self.update(|table| {
            for e in &expired {
                table.remove(&e.net, e.kind, Some(e.source));
            }
            true
        });
        expired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNet {
        parse_entry(text).unwrap()
    }

    #[test]
    fn entries_parse_as_addresses_or_blocks() {
        assert_eq!(net("10.1.2.3"), "10.1.2.3/32".parse::<IpNet>().unwrap());
        assert_eq!(net("10.1.2.3/8"), "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!(
            net("2001:db8::1/32"),
            "2001:db8::/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            net("::ffff:192.0.2.0/120"),
            "192.0.2.0/24".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_entry("10.0.0.0/33"),
            Err(ListError::BadEntry("10.0.0.0/33".into()))
        );
        assert!(parse_entry("example.com").is_err());
    }

    #[test]
    fn the_longest_prefix_wins_and_a_tie_goes_to_the_blacklist() {
        let lists = Lists::new();
        lists.set_config_entries(
            &[net("192.168.0.0/16"), net("203.0.113.0/24")],
            &[
                net("192.168.7.0/24"),
                net("203.0.113.0/24"),
                net("198.51.100.0/24"),
            ],
        );
        lists.add(net("192.168.7.7"), ListKind::Whitelist, None);
        assert_eq!(
            lists.lookup(ip("192.168.1.1"), 0),
            Some(ListMatch::Whitelisted)
        );
        assert_eq!(
            lists.lookup(ip("192.168.7.1"), 0),
            Some(ListMatch::Blacklisted { expires: None })
        );
        assert_eq!(
            lists.lookup(ip("192.168.7.7"), 0),
            Some(ListMatch::Whitelisted)
        );
        assert_eq!(
            lists.lookup(ip("203.0.113.5"), 0),
            Some(ListMatch::Blacklisted { expires: None })
        );
        assert_eq!(
            lists.lookup(ip("198.51.100.200"), 0),
            Some(ListMatch::Blacklisted { expires: None })
        );
        assert_eq!(lists.lookup(ip("8.8.8.8"), 0), None);
        // An IPv4-mapped IPv6 client is the IPv4 client.
        assert_eq!(
            lists.lookup(ip("::ffff:198.51.100.1"), 0),
            Some(ListMatch::Blacklisted { expires: None })
        );
    }

    #[test]
    fn ipv6_blocks_match_by_prefix() {
        let lists = Lists::new();
        lists.add(net("2001:db8:abcd::/48"), ListKind::Blacklist, None);
        lists.add(net("2001:db8:abcd:12::/64"), ListKind::Whitelist, None);
        assert!(matches!(
            lists.lookup(ip("2001:db8:abcd:1::9"), 0),
            Some(ListMatch::Blacklisted { .. })
        ));
        assert_eq!(
            lists.lookup(ip("2001:db8:abcd:12::9"), 0),
            Some(ListMatch::Whitelisted)
        );
        assert_eq!(lists.lookup(ip("2001:db8:abce::1"), 0), None);
    }

    #[test]
    fn a_blacklist_duration_is_honoured() {
        // The Python package ignored it.
        let lists = Lists::new();
        lists.add(net("203.0.113.9"), ListKind::Blacklist, Some(1_000));
        assert_eq!(
            lists.lookup(ip("203.0.113.9"), 999),
            Some(ListMatch::Blacklisted {
                expires: Some(1_000)
            })
        );
        assert_eq!(lists.lookup(ip("203.0.113.9"), 1_000), None);
        assert_eq!(lists.entries(1_000), vec![]);
        assert_eq!(lists.prune(1_000), 1);
    }

    #[test]
    fn reload_replaces_config_entries_and_keeps_runtime_ones() {
        let lists = Lists::new();
        lists.set_config_entries(&[], &[net("203.0.113.0/24")]);
        lists.add(net("198.51.100.1"), ListKind::Blacklist, None);
        lists.set_config_entries(&[], &[net("192.0.2.0/24")]);
        assert_eq!(lists.lookup(ip("203.0.113.1"), 0), None);
        assert!(lists.lookup(ip("192.0.2.1"), 0).is_some());
        assert!(lists.lookup(ip("198.51.100.1"), 0).is_some());
        assert!(lists.remove(&net("198.51.100.1"), ListKind::Blacklist));
        assert!(!lists.remove(&net("198.51.100.1"), ListKind::Blacklist));
        assert_eq!(lists.entries(0).len(), 1);
    }
}

//! Lists and blocks shared by every instance of a gateway (with the Redis
//! store). Each instance writes its own changes through a [`SharedSink`] as
//! they happen, and every second reads the shared state back and
//! [`reconcile`]s its own with it: what another instance added appears,
//! what it removed disappears. A change made here wins over what the shared
//! state says for [`LOCAL_GRACE`], the time its write needs to land.

use std::collections::HashMap;
use std::time::Duration;

use ipnet::IpNet;

use crate::engine::Engine;
use crate::limit::Nanos;
use crate::protect::blocks::{Block, BlockReason};
use crate::protect::lists::{EntrySource, ListKind};

/// How long a local change is not overruled by the shared state.
pub const LOCAL_GRACE: Duration = Duration::from_secs(2);

/// One change to the shared lists or blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    ListAdd {
        kind: ListKind,
        net: IpNet,
        expires: Option<Nanos>,
    },
    ListRemove {
        kind: ListKind,
        net: IpNet,
    },
    Block(Block),
    Unblock {
        identity: String,
    },
}

impl Change {
    /// The field the change is about, as the shared state names it.
    pub fn field(&self) -> String {
        match self {
            Change::ListAdd { kind, net, .. } | Change::ListRemove { kind, net } => {
                list_field(*kind, net)
            }
            Change::Block(block) => block.identity.clone(),
            Change::Unblock { identity } => identity.clone(),
        }
    }
}

/// Where an instance sends its own changes; never blocks the caller.
pub trait SharedSink: Send + Sync {
    fn publish(&self, change: Change);
}

/// `blacklist|203.0.113.0/24`.
pub fn list_field(kind: ListKind, net: &IpNet) -> String {
    let kind = match kind {
        ListKind::Whitelist => "whitelist",
        ListKind::Blacklist => "blacklist",
    };
    format!("{kind}|{net}")
}

pub fn parse_list_field(field: &str) -> Option<(ListKind, IpNet)> {
    let (kind, net) = field.split_once('|')?;
    let kind = match kind {
        "whitelist" => ListKind::Whitelist,
        "blacklist" => ListKind::Blacklist,
        _ => return None,
    };
    Some((kind, net.parse().ok()?))
}

/// A block as stored: `reason|rule|since|until` (rule empty when none).
pub fn block_value(block: &Block) -> String {
    let reason = match block.reason {
        BlockReason::Violation => "violation",
        BlockReason::Ddos => "ddos",
    };
    let rule = block.rule.as_deref().unwrap_or("");
    format!("{reason}|{rule}|{}|{}", block.since, block.until)
}

pub fn parse_block(identity: &str, value: &str) -> Option<Block> {
    let mut parts = value.splitn(4, '|');
    let reason = match parts.next()? {
        "violation" => BlockReason::Violation,
        "ddos" => BlockReason::Ddos,
        _ => return None,
    };
    let rule = Some(parts.next()?)
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    let since = parts.next()?.parse().ok()?;
    let until = parts.next()?.parse().ok()?;
    Some(Block {
        identity: identity.to_string(),
        reason,
        rule,
        since,
        until,
    })
}

/// The shared state as last read: list fields → expiry (0 = permanent), and
/// blocks by identity.
#[derive(Debug, Default)]
pub struct SharedState {
    pub lists: HashMap<String, Nanos>,
    pub blocks: HashMap<String, String>,
}

/// Brings the engine's run-time list entries and its blocks in line with
/// `state`, except the fields in `recent` (changed here within the grace).
/// Returns how many local entries changed.
pub fn reconcile(
    engine: &Engine,
    state: &SharedState,
    recent: &dyn Fn(&str) -> bool,
    now: Nanos,
) -> usize {
    let mut changed = 0;
    let lists = engine.lists();
    let local: HashMap<String, Option<Nanos>> = lists
        .entries(now)
        .into_iter()
        .filter(|e| e.source == EntrySource::Runtime)
        .map(|e| (list_field(e.kind, &e.net), e.expires))
        .collect();
    for (field, &expires) in &state.lists {
        let expires = (expires != 0).then_some(expires);
        if recent(field) || expires.is_some_and(|t| t <= now) || local.get(field) == Some(&expires)
        {
            continue;
        }
        if let Some((kind, net)) = parse_list_field(field) {
            lists.add(net, kind, expires);
            changed += 1;
        }
    }
    for field in local.keys() {
        if !state.lists.contains_key(field)
            && !recent(field)
            && let Some((kind, net)) = parse_list_field(field)
        {
            lists.remove(&net, kind);
            changed += 1;
        }
    }

    let blocks = engine.blocks();
    for (identity, value) in &state.blocks {
        if recent(identity) {
            continue;
        }
        if let Some(block) = parse_block(identity, value)
            && block.until > now
            && blocks.active(identity, now).is_none()
        {
            blocks.block(
                identity,
                block.reason,
                block.rule.as_deref(),
                block.since,
                block.until,
            );
            changed += 1;
        }
    }
    for block in blocks.list(now) {
        if !state.blocks.contains_key(&block.identity) && !recent(&block.identity) {
            blocks.unblock(&block.identity);
            changed += 1;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_values_read_back_as_written() {
        let net: IpNet = "203.0.113.0/24".parse().unwrap();
        let field = list_field(ListKind::Blacklist, &net);
        assert_eq!(field, "blacklist|203.0.113.0/24");
        assert_eq!(parse_list_field(&field), Some((ListKind::Blacklist, net)));
        assert_eq!(parse_list_field("greylist|1.2.3.4/32"), None);
        assert_eq!(parse_list_field("blacklist|nonsense"), None);

        let block = Block {
            identity: "header:x-key=a|b".into(),
            reason: BlockReason::Violation,
            rule: Some("login".into()),
            since: 5,
            until: 9,
        };
        let value = block_value(&block);
        assert_eq!(parse_block(&block.identity, &value), Some(block.clone()));
        let ddos = Block {
            reason: BlockReason::Ddos,
            rule: None,
            ..block
        };
        assert_eq!(parse_block(&ddos.identity, &block_value(&ddos)), Some(ddos));
        assert_eq!(parse_block("x", "violation|r|notanumber|1"), None);
    }
}

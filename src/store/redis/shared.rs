//! The Redis side of the lists and blocks every instance shares
//! (src/protect/shared.rs): two hashes beside the counters,
//! `{prefix}{shared}:lists` (`blacklist|203.0.113.0/24` → expiry in Unix
//! nanoseconds, 0 for none) and `{prefix}{shared}:blocks` (identity →
//! `reason|rule|since|until`), one hash tag so both live in one cluster
//! slot. Changes are written as they happen, from a bounded queue; the
//! hashes are read back every [`REFRESH`] and reconciled with this
//! instance's own state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::conn::Conn;
use crate::config::RedisConfig;
use crate::engine::Engine;
use crate::protect::shared::{
    Change, LOCAL_GRACE, SharedSink, SharedState, block_value, list_field, parse_block, reconcile,
};
use crate::store::StoreError;

/// How often the shared state is read back: how long another instance's
/// change takes to apply here, at most (plus one Redis round trip).
pub const REFRESH: Duration = Duration::from_secs(1);

/// Changes waiting to be written; beyond it they are dropped and counted
/// (the next change of the same entry, or the other instances' refresh, is
/// then what carries it).
const QUEUE: usize = 1024;

pub struct RedisShared {
    conn: Conn,
    lists_key: String,
    blocks_key: String,
    queue: mpsc::Sender<Change>,
    /// Fields changed here lately: the shared state does not overrule them
    /// until their write has had time to land.
    recent: Mutex<HashMap<String, Instant>>,
    dropped: AtomicU64,
}

impl RedisShared {
    /// Connects (lazily, like the store), starts the writer and the refresh,
    /// and makes `engine` send its changes here. Needs a Tokio runtime.
    pub fn start(
        config: &RedisConfig,
        engine: &Arc<Engine>,
    ) -> Result<Arc<RedisShared>, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::Unavailable(
                "shared lists need a Tokio runtime".into(),
            ));
        }
        let conn = Conn::open(config)?;
        let prefix = &config.key_prefix;
        let (queue, changes) = mpsc::channel(QUEUE);
        let shared = Arc::new(RedisShared {
            conn,
            lists_key: format!("{prefix}{{shared}}:lists"),
            blocks_key: format!("{prefix}{{shared}}:blocks"),
            queue,
            recent: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(write_changes(Arc::clone(&shared), changes));
        tokio::spawn(refresh(Arc::downgrade(&shared), Arc::downgrade(engine)));
        engine.set_shared(Arc::clone(&shared) as Arc<dyn SharedSink>);
        Ok(shared)
    }

    /// Changes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn command(&self, change: &Change) -> redis::Cmd {
        let mut cmd;
        match change {
            Change::ListAdd { kind, net, expires } => {
                cmd = redis::cmd("HSET");
                cmd.arg(&self.lists_key)
                    .arg(list_field(*kind, net))
                    .arg(expires.unwrap_or(0));
            }
            Change::ListRemove { kind, net } => {
                cmd = redis::cmd("HDEL");
                cmd.arg(&self.lists_key).arg(list_field(*kind, net));
            }
            Change::Block(block) => {
                cmd = redis::cmd("HSET");
                cmd.arg(&self.blocks_key)
                    .arg(&block.identity)
                    .arg(block_value(block));
            }
            Change::Unblock { identity } => {
                cmd = redis::cmd("HDEL");
                cmd.arg(&self.blocks_key).arg(identity);
            }
        }
        cmd
    }

    /// Reads both hashes and brings `engine` in line with them; drops the
    /// fields that have expired from Redis.
    async fn refresh_once(&self, engine: &Engine) -> redis::RedisResult<()> {
        let lists: HashMap<String, u64> = self
            .conn
            .query(redis::cmd("HGETALL").arg(&self.lists_key))
            .await?;
        let blocks: HashMap<String, String> = self
            .conn
            .query(redis::cmd("HGETALL").arg(&self.blocks_key))
            .await?;
        let now = engine.now();
        self.recent
            .lock()
            .retain(|_, at| at.elapsed() < LOCAL_GRACE);
        let recent = |field: &str| self.recent.lock().contains_key(field);
        let state = SharedState { lists, blocks };
        let changed = reconcile(engine, &state, &recent, now);
        if changed > 0 {
            tracing::debug!(changed, "shared lists and blocks applied");
        }

        let expired_entries: Vec<&String> = state
            .lists
            .iter()
            .filter(|(_, expires)| **expires != 0 && **expires <= now)
            .map(|(field, _)| field)
            .collect();
        let expired_blocks: Vec<&String> = state
            .blocks
            .iter()
            .filter(|(identity, value)| parse_block(identity, value).is_none_or(|b| b.until <= now))
            .map(|(identity, _)| identity)
            .collect();
        for (key, fields) in [
            (&self.lists_key, expired_entries),
            (&self.blocks_key, expired_blocks),
        ] {
            if !fields.is_empty() {
                self.conn
                    .query::<()>(redis::cmd("HDEL").arg(key).arg(fields))
                    .await?;
            }
        }
        Ok(())
    }
}

impl SharedSink for RedisShared {
    fn publish(&self, change: Change) {
        self.recent.lock().insert(change.field(), Instant::now());
        if self.queue.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_changes(shared: Arc<RedisShared>, mut changes: mpsc::Receiver<Change>) {
    let mut failing = false;
    while let Some(change) = changes.recv().await {
        match shared.conn.query::<()>(&shared.command(&change)).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("shared lists and blocks: writing to Redis again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "shared lists and blocks: a change was not written to Redis; it stays on this instance");
            }
            Err(_) => {}
        }
    }
}

async fn refresh(shared: Weak<RedisShared>, engine: Weak<Engine>) {
    let mut ticks = tokio::time::interval(REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let (Some(shared), Some(engine)) = (shared.upgrade(), engine.upgrade()) else {
            break;
        };
        match shared.refresh_once(&engine).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("shared lists and blocks: reading from Redis again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "shared lists and blocks: cannot read Redis; keeping the local ones");
            }
            Err(_) => {}
        }
    }
}

//! One handle for a single Redis (multiplexed ConnectionManager, which
//! reconnects by itself) or a Redis Cluster (the async cluster client).
//! Both connect lazily: the gateway starts while Redis is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, ScriptInvocation};

use crate::config::RedisConfig;
use crate::store::StoreError;

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub fn open(config: &RedisConfig) -> Result<Conn, StoreError> {
        let invalid = |e: redis::RedisError| StoreError::Unavailable(format!("redis config: {e}"));
        if config.cluster.is_empty() {
            let client = redis::Client::open(config.url.as_str()).map_err(invalid)?;
            // Few, quick reconnection attempts: the circuit breaker paces
            // retries while Redis is down, and a long backoff inside the
            // manager would delay recovery once it is back.
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                // A call that gets no answer marks the connection broken, so a
                // half-dead TCP connection is replaced rather than waited on.
                .set_response_timeout(Some(config.timeout.max(Duration::from_millis(1))))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            let manager =
                ConnectionManager::new_lazy_with_config(client, manager_config).map_err(invalid)?;
            Ok(Conn::Single(manager))
        } else {
            let client = ClusterClient::builder(config.cluster.iter().map(String::as_str))
                .retries(1)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()
                .map_err(invalid)?;
            let cluster_config = ClusterConfig::new()
                .set_connection_timeout(config.connect_timeout)
                .set_response_timeout(config.timeout.max(Duration::from_millis(1)));
            Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(cluster_config),
            ))
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    pub async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<Vec<i64>> {
        match self {
            Conn::Single(c) => invocation.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
        }
    }

    pub async fn load_script(&self, script: &::redis::Script) -> RedisResult<()> {
        match self {
            Conn::Single(c) => script.load_async(&mut c.clone()).await.map(|_| ()),
            Conn::Cluster(c) => script.load_async(&mut c.clone()).await.map(|_| ()),
        }
    }

    /// Any command, on whichever node holds its key.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    pub async fn ping(&self) -> RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

//! Redis for the tests: the shared server (REDIS_URL, default
//! 127.0.0.1:6379) with a unique key prefix per test, private `redis-server`
//! processes on spare ports that a test may kill and restart, and a local
//! three-master Redis Cluster. Every process is killed on drop.
//!
//! Without a reachable Redis the tests print SKIPPED and pass, unless
//! RATETHROTTLE_REQUIRE_REDIS=1 (CI), where they fail.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratethrottle::config::RedisConfig;
use ratethrottle::store::{RedisStore, RedisStoreOptions};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn required() -> bool {
    std::env::var("RATETHROTTLE_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

/// Whether the shared Redis answers (asked once per test binary); prints
/// SKIPPED once per test (or panics in CI) if not.
pub fn redis_available(test: &str) -> bool {
    static ANSWERS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ANSWERS.get_or_init(|| {
        ::redis::Client::open(redis_url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| ::redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    });
    skip_unless(ok, test, &format!("no Redis at {}", redis_url()))
}

/// Whether `redis-server` and `redis-cli` can be run (private servers, cluster).
pub fn redis_binaries(test: &str) -> bool {
    let ok = ["redis-server", "redis-cli"].iter().all(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    skip_unless(ok, test, "redis-server/redis-cli not found")
}

fn skip_unless(ok: bool, test: &str, why: &str) -> bool {
    static REPORTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if !ok {
        assert!(
            !required(),
            "{test}: {why}, and RATETHROTTLE_REQUIRE_REDIS=1"
        );
        // Once per test: a proptest asks for every case.
        let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        if reported.iter().any(|t| t == test) {
            return false;
        }
        reported.push(test.to_string());
        // Straight to stderr: the test harness captures eprintln! of passing
        // tests, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {why} (set RATETHROTTLE_REQUIRE_REDIS=1 to fail instead)"
        );
    }
    ok
}

/// A key prefix no other test or process uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "rt-test:{test}:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The store settings the tests use: generous timeout (the machine is shared).
pub fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_string(),
        cluster: Vec::new(),
        key_prefix: prefix.to_string(),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        max_connections: 50,
    }
}

pub fn store(config: &RedisConfig, options: RedisStoreOptions) -> Arc<RedisStore> {
    RedisStore::start(config, options).expect("redis store")
}

/// Deletes every key under `prefix` (never anything else: the server is shared).
pub fn delete_prefix(url: &str, prefix: &str) {
    let Ok(mut con) = ::redis::Client::open(url).and_then(|c| c.get_connection()) else {
        return;
    };
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut con)
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<u64, _> = ::redis::cmd("DEL").arg(chunk).query(&mut con);
    }
}

/// Runs a command on the server at `url`.
pub fn query<T: ::redis::FromRedisValue>(url: &str, cmd: &::redis::Cmd) -> ::redis::RedisResult<T> {
    let mut con =
        ::redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    cmd.query(&mut con)
}

/// A port nothing listens on now (nor on its cluster bus port, port + 10000).
///
/// The ports come from 20000..22700, below the kernel's ephemeral range
/// (32768 and up by default): an outgoing connection of a test running in
/// parallel can never take one between this check and the server's bind, nor
/// between a kill and a restart on the same port. Each call moves on, so two
/// tests of one binary are not handed the same port; test processes running
/// at once (cargo runs test binaries one after another) could be, which
/// [`RedisServer::try_start_with`] notices.
pub fn free_port(with_bus: bool) -> u16 {
    const FIRST: u64 = 20_000;
    const SPAN: u64 = 2_700;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let offset = u64::from(std::process::id()) * 97;
    for _ in 0..SPAN {
        let port = (FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && (!with_bus || free(port + 10_000)) {
            return port;
        }
    }
    panic!("no free port in 20000..22700");
}

/// A private `redis-server` on a spare port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(free_port(false), &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        RedisServer::try_start_with(port, extra).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The server, or why it did not come up (its port taken, most likely).
    pub fn try_start_with(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?,
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.try_run()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        self.try_run().unwrap_or_else(|error| panic!("{error}"));
    }

    /// Starts the process and waits until it is the one answering on the
    /// port: a server that exits at once (its port or bus port taken) is an
    /// error, and so is another process's server answering in its place.
    fn try_run(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let pid = format!("process_id:{}\r\n", child.id());
        let port = self.port;
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            let info = query::<String>(
                &format!("redis://127.0.0.1:{port}"),
                ::redis::cmd("INFO").arg("server"),
            );
            match info {
                Ok(info) if info.contains(&pid) => return Ok(()),
                Ok(_) => return Err(format!("port {port} is another Redis server's")),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Err(format!(
            "redis-server on port {port} did not answer within 10 s"
        ))
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills the server at once (SIGKILL): clients see their connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_until(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok()
}

/// Three masters, no replicas, on spare ports; stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Retries on fresh ports: a port taken by something outside the tests
    /// between the check and the bind is not a failure of ours.
    pub fn start() -> RedisCluster {
        let mut last_error = String::new();
        for _ in 0..3 {
            match RedisCluster::try_start() {
                Ok(cluster) => return cluster,
                Err(error) => last_error = error,
            }
        }
        panic!("no Redis Cluster after 3 tries: {last_error}");
    }

    fn try_start() -> Result<RedisCluster, String> {
        let nodes = (0..3)
            .map(|_| {
                RedisServer::try_start_with(
                    free_port(true),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect::<Result<Vec<RedisServer>, String>>()?;
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create {addrs:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let cluster = RedisCluster { nodes };
        if !cluster.wait_ok(Duration::from_secs(20)) {
            return Err("cluster_state did not become ok".to_string());
        }
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node says cluster_state:ok and knows all slots.
    pub fn wait_ok(&self, within: Duration) -> bool {
        wait_until(within, || {
            self.nodes.iter().all(|n| {
                query::<String>(&n.url(), ::redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        })
    }

    /// The port of the master serving `key`'s slot.
    pub fn owner_port(&self, key: &str) -> Option<u16> {
        let url = self.nodes.first()?.url();
        let slot: i64 = query(&url, ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).ok()?;
        let ranges: Vec<::redis::Value> = query(&url, ::redis::cmd("CLUSTER").arg("SLOTS")).ok()?;
        ranges.iter().find_map(|range| {
            let ::redis::Value::Array(parts) = range else {
                return None;
            };
            let int = |v: Option<&::redis::Value>| match v {
                Some(::redis::Value::Int(n)) => Some(*n),
                _ => None,
            };
            let (from, to) = (int(parts.first())?, int(parts.get(1))?);
            let ::redis::Value::Array(master) = parts.get(2)? else {
                return None;
            };
            (from <= slot && slot <= to)
                .then(|| int(master.get(1)))?
                .map(|p| p as u16)
        })
    }

    /// Restarts one node with its cluster config (its slots), but no data:
    /// what a crash of a master without persistence or replica does.
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index].restart();
    }
}

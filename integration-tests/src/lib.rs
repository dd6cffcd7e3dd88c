//! Shared harness for the integration tests: build an engine from YAML with a
//! manual clock, describe requests tersely, run the CLI in-process, and (in
//! [`net`]) start real gateways, upstreams and clients on 127.0.0.1.

pub mod graphql;
pub mod grpc;
pub mod hook;
pub mod net;
pub mod redis;
pub mod ws;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ratethrottle::clock::ManualClock;
use ratethrottle::config;
use ratethrottle::decision::Decision;
use ratethrottle::engine::{Engine, RequestFacts};
use ratethrottle::store::MemoryStore;

/// Loads YAML with an empty environment, panicking with every diagnostic.
pub fn config_from(yaml: &str) -> config::Config {
    match config::load_str(yaml, "test.yaml", &|_| None) {
        Ok(loaded) => loaded.config,
        Err(errors) => panic!("config does not load:\n{errors}"),
    }
}

/// An engine over the memory store with a clock that moves only when told.
pub fn engine(yaml: &str) -> (Arc<Engine>, Arc<ManualClock>) {
    let clock = ManualClock::at_test_epoch();
    let engine = Engine::new(
        config_from(yaml),
        Arc::new(MemoryStore::new()),
        clock.clone(),
    );
    (Arc::new(engine), clock)
}

/// A request as a front end would describe it.
#[derive(Clone)]
pub struct Req {
    pub peer: IpAddr,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    pub headers: HeaderMap,
    pub cost: u64,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            peer: "192.0.2.10".parse().expect("address"),
            method: Method::GET,
            path: path.to_string(),
            query: None,
            host: Some("api.example.com".into()),
            headers: HeaderMap::new(),
            cost: 1,
        }
    }

    pub fn post(path: &str) -> Req {
        Req {
            method: Method::POST,
            ..Req::get(path)
        }
    }

    pub fn from(mut self, peer: &str) -> Req {
        self.peer = peer.parse().expect("address");
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Req {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("header value"),
        );
        self
    }

    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            peer: self.peer,
            client_ip: None,
            method: &self.method,
            host: self.host.as_deref(),
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            cost: self.cost,
        }
    }
}

/// Decides one request on a small runtime.
pub fn decide(engine: &Engine, request: &Req) -> Decision {
    block_on(engine.decide(&request.facts()))
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Runs `ratethrottle ARGS...` in-process: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (u8, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("ratethrottle").chain(args.iter().copied());
    let code = ratethrottle::cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// The repository root, where `config/` lives.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

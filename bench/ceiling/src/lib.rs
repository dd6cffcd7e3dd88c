//! Shared by the ceiling servers: command-line arguments and the runtime,
//! built the way `ratethrottle serve --workers N` builds its own.

use std::net::SocketAddr;

/// `--listen ADDR [--workers N] [--upstream ADDR]`.
pub struct ServerArgs {
    pub listen: SocketAddr,
    pub workers: Option<usize>,
    /// Where `hyper-proxy` forwards to.
    pub upstream: Option<SocketAddr>,
    /// `hyper-proxy` speaks HTTP/2 (prior knowledge) to the upstream, as
    /// ratethrottle does to an upstream with `http2: true` (gRPC).
    pub http2: bool,
}

impl ServerArgs {
    /// Parses the process arguments, or exits with a usage line.
    pub fn from_env(program: &str) -> ServerArgs {
        match ServerArgs::parse(std::env::args().skip(1)) {
            Ok(args) => args,
            Err(message) => {
                eprintln!(
                    "{program}: {message}\nusage: {program} --listen ADDR [--workers N] [--upstream ADDR] [--http2]"
                );
                std::process::exit(2);
            }
        }
    }

    fn parse(mut args: impl Iterator<Item = String>) -> Result<ServerArgs, String> {
        let mut listen = None;
        let mut workers = None;
        let mut upstream = None;
        let mut http2 = false;
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--listen" => {
                    let text = value("--listen")?;
                    listen = Some(text.parse().map_err(|_| format!("bad address {text:?}"))?);
                }
                "--workers" => {
                    let text = value("--workers")?;
                    workers = Some(text.parse().map_err(|_| format!("bad count {text:?}"))?);
                }
                "--upstream" => {
                    let text = value("--upstream")?;
                    upstream = Some(text.parse().map_err(|_| format!("bad address {text:?}"))?);
                }
                "--http2" => http2 = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(ServerArgs {
            listen: listen.ok_or("--listen is required")?,
            workers,
            upstream,
            http2,
        })
    }

    /// The runtime `ratethrottle serve` would use with the same `--workers`:
    /// current-thread for one worker, multi-thread otherwise.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.workers {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(workers) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(workers.max(1));
                builder
            }
            None => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

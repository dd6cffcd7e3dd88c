//! `ratethrottle serve`: load the config, start every listener it enables, and
//! run until SIGTERM/SIGINT, then drain in-flight requests and exit 0.

use clap::Args;

use super::{Cli, Io, init_logging, load_config};
use crate::{app, config};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Worker threads [default: one per CPU core]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

pub fn run(cli: &Cli, args: &ServeArgs, io: &mut Io<'_>) -> anyhow::Result<u8> {
    let Some((path, loaded)) = load_config(cli, io)? else {
        return Ok(1);
    };
    let default_level = loaded
        .config
        .global
        .log_level
        .clone()
        .unwrap_or_else(|| "info".to_string());
    init_logging(cli.log_format, &default_level);
    for warning in &loaded.warnings {
        tracing::warn!(%warning, "config warning");
    }
    tracing::info!(config = %path.display(), summary = %config::summary(&loaded.config), "config loaded");

    // One worker: a current-thread runtime, which skips the work-stealing
    // machinery a single worker cannot use.
    let mut runtime = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers.max(1));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime.enable_all().thread_name("ratethrottle").build()?;
    match runtime.block_on(app::serve(path, loaded.config)) {
        Ok(()) => Ok(0),
        Err(error) => {
            writeln!(io.err, "error: {error}")?;
            Ok(1)
        }
    }
}

//! The command line (SPEC.md, "Command line"): `serve`, `config`, `test`,
//! and `monitor`, `manage` and `stats`, which talk to a running gateway's admin API. Every
//! command reports errors on stderr with a non-zero exit code, never a panic.

mod admin_client;
mod config_cmd;
mod manage_cmd;
pub mod monitor;
mod monitor_cmd;
mod serve_cmd;
mod stats_cmd;
mod test_cmd;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ratethrottle",
    version,
    about = "Rate-limiting and DDoS-protection gateway",
    propagate_version = true
)]
pub struct Cli {
    /// Config file [default: $RATETHROTTLE_CONFIG, else ./ratethrottle.yaml, else config/ratethrottle.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: proxy, TLS, Envoy and admin listeners as the config enables them
    Serve(serve_cmd::ServeArgs),
    /// Check, show or export the configuration
    Config(config_cmd::ConfigArgs),
    /// Replay N requests against one rule in-process and report what the gateway would decide
    Test(test_cmd::TestArgs),
    /// Live dashboard of a running gateway, read from its admin API
    Monitor(monitor_cmd::MonitorArgs),
    /// Change or show the lists of a running gateway (token from $RATETHROTTLE_ADMIN_TOKEN)
    Manage(manage_cmd::ManageArgs),
    /// Print or export the statistics of a running gateway
    Stats(stats_cmd::StatsArgs),
}

/// The process entry point: real arguments, stdout and stderr.
pub fn main() -> ExitCode {
    let code = run(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}

/// Runs one command line, writing to `out` and `err`; the exit code (0 ok,
/// 1 failure, 2 usage error). Tests call this in-process.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version arrive as "errors" meant for stdout, exit 0.
            let text = error.render().to_string();
            return if error.use_stderr() {
                let _ = write!(err, "{text}");
                2
            } else {
                let _ = write!(out, "{text}");
                0
            };
        }
    };
    let mut io = Io { out, err };
    let result = match &cli.command {
        Command::Serve(args) => serve_cmd::run(&cli, args, &mut io),
        Command::Config(args) => {
            init_logging(cli.log_format, "warn");
            config_cmd::run(&cli, args, &mut io)
        }
        Command::Test(args) => {
            init_logging(cli.log_format, "warn");
            test_cmd::run(&cli, args, &mut io)
        }
        Command::Monitor(args) => {
            init_logging(cli.log_format, "error");
            monitor_cmd::run(&cli, args, &mut io)
        }
        Command::Manage(args) => {
            init_logging(cli.log_format, "warn");
            manage_cmd::run(&cli, args, &mut io)
        }
        Command::Stats(args) => {
            init_logging(cli.log_format, "warn");
            stats_cmd::run(&cli, args, &mut io)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(io.err, "error: {error:#}");
            1
        }
    }
}

/// Where a command writes.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
}

/// Loads the config the command line names (or the default one); on failure
/// prints every error, one a line, and returns `None` (exit 1).
fn load_config(
    cli: &Cli,
    io: &mut Io<'_>,
) -> anyhow::Result<Option<(PathBuf, crate::config::Loaded)>> {
    let path = crate::config::default_path(cli.config.as_deref());
    match crate::config::load_file(&path) {
        Ok(loaded) => Ok(Some((path, loaded))),
        Err(errors) => {
            for error in &errors.0 {
                writeln!(io.err, "{error}")?;
            }
            Ok(None)
        }
    }
}

/// `RUST_LOG` when set, else `default_level`.
fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

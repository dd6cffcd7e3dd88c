//! `ratethrottle config --validate | --show | --export FILE`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Cli, Io, load_config};
use crate::config;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["validate", "show", "export"])))]
pub struct ConfigArgs {
    /// Check the file: a one-line summary and warnings, or every error with its location (exit 1)
    #[arg(long)]
    pub validate: bool,
    /// Print the effective configuration after defaults, secrets redacted
    #[arg(long)]
    pub show: bool,
    /// Write the effective configuration (secrets redacted) to FILE
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
}

pub fn run(cli: &Cli, args: &ConfigArgs, io: &mut Io<'_>) -> anyhow::Result<u8> {
    let Some((path, loaded)) = load_config(cli, io)? else {
        return Ok(1);
    };
    for warning in &loaded.warnings {
        writeln!(io.err, "warning: {warning}")?;
    }
    if args.validate {
        writeln!(
            io.out,
            "{}: {}",
            path.display(),
            config::summary(&loaded.config)
        )?;
    }
    if args.show {
        write!(io.out, "{}", config::to_yaml(&loaded.config))?;
    }
    if let Some(target) = &args.export {
        std::fs::write(target, config::to_yaml(&loaded.config))
            .with_context(|| format!("cannot write {}", target.display()))?;
        writeln!(
            io.out,
            "wrote the effective configuration of {} to {}",
            path.display(),
            target.display()
        )?;
    }
    Ok(0)
}

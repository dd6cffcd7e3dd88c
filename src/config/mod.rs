//! The YAML configuration: read (with `${ENV}` substitution and the Python
//! package's `RT_*` overrides), validated with every error located by YAML path
//! and line, and turned into the typed [`Config`].

mod diagnostic;
mod env;
mod model;
mod ops;
mod read;
mod routes;
mod rules;
mod show;
mod source;
mod storage;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use diagnostic::{ConfigErrors, Diagnostic};
pub use model::*;
pub use show::{redacted, summary, to_yaml};
pub use units::{format_duration, format_size, parse_duration, parse_size};

use diagnostic::Report;

/// A validated configuration, the warnings found on the way, and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    pub source: PathBuf,
}

/// Reads and validates `path`, with the process environment for `${VAR}` and `RT_*`.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigErrors::single(&name, format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        ConfigErrors::single(
            &name,
            format!(
                "not UTF-8 text (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let mut loaded = load_str(&text, &name, &|var| std::env::var(var).ok())?;
    loaded.source = path.to_path_buf();
    Ok(loaded)
}

/// Reads and validates YAML text; `file_name` is what diagnostics call it and
/// `env` answers `${VAR}` and `RT_*` look-ups.
pub fn load_str(
    text: &str,
    file_name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let mut report = Report::new(file_name);
    let Some(mut root) = source::parse(text, &mut report) else {
        return Err(ConfigErrors(report.errors));
    };
    env::substitute_tree(&mut root, "", env, &mut report);
    env::apply_overrides(&mut root, env);
    let config = validate::build(&root, &mut report);
    report.finish();
    if !report.errors.is_empty() {
        return Err(ConfigErrors(report.errors));
    }
    Ok(Loaded {
        config,
        warnings: report.warnings,
        source: PathBuf::from(file_name),
    })
}

/// The file to load: `explicit`, else `$RATETHROTTLE_CONFIG`, else
/// `./ratethrottle.yaml` when it exists, else `config/ratethrottle.yaml`.
pub fn default_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("RATETHROTTLE_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let local = PathBuf::from("ratethrottle.yaml");
    if local.is_file() {
        return local;
    }
    PathBuf::from("config/ratethrottle.yaml")
}

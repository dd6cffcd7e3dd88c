//! Located configuration messages: every error and warning names the file,
//! the line and column, and the YAML path of what it is about.

use std::fmt;

/// One located message about the configuration.
///
/// `line` and `column` are 1-based. A message that has no place in the file
/// (an unreadable file, a bad `RT_*` variable) has `line == 0`, and its `file`
/// names where the value came from instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn single(file: &str, message: String) -> ConfigErrors {
        ConfigErrors(vec![Diagnostic {
            file: file.to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            message,
        }])
    }
}

/// Where a value came from: a position in the file, or an environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line and column.
    File { line: usize, column: usize },
    /// An `RT_*` override.
    Env(&'static str),
}

/// Collects errors and warnings while a file is read and validated.
pub struct Report {
    file: String,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// Names of rules that were declared but failed validation: routes that
    /// name them are not reported again (the rule's own error says it all).
    pub invalid_rules: Vec<String>,
}

impl Report {
    pub fn new(file: &str) -> Report {
        Report {
            file: file.to_string(),
            errors: Vec::new(),
            invalid_rules: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn located(&self, origin: Origin, path: &str, message: String) -> Diagnostic {
        match origin {
            Origin::File { line, column } => Diagnostic {
                file: self.file.clone(),
                line,
                column,
                path: path.to_string(),
                message,
            },
            Origin::Env(var) => Diagnostic {
                file: format!("${var}"),
                line: 0,
                column: 0,
                path: path.to_string(),
                message,
            },
        }
    }

    pub fn error(&mut self, origin: Origin, path: &str, message: impl Into<String>) {
        let d = self.located(origin, path, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, origin: Origin, path: &str, message: impl Into<String>) {
        let d = self.located(origin, path, message.into());
        self.warnings.push(d);
    }

    /// Sorts both lists into file order (environment messages first) and
    /// drops exact duplicates, which a value reached by two paths can cause.
    pub fn finish(&mut self) {
        for list in [&mut self.errors, &mut self.warnings] {
            list.sort_by_key(|d| (d.line, d.column));
            list.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_cli_contract() {
        let d = Diagnostic {
            file: "ratethrottle.yaml".into(),
            line: 14,
            column: 13,
            path: "rules[2].window".into(),
            message: "expected a duration like 60, \"90s\", \"1m\", \"1h\"".into(),
        };
        assert_eq!(
            d.to_string(),
            "ratethrottle.yaml:14:13: rules[2].window: expected a duration like 60, \"90s\", \"1m\", \"1h\""
        );
        let env = Diagnostic {
            file: "$RT_REDIS_PORT".into(),
            line: 0,
            column: 0,
            path: "storage.redis.port".into(),
            message: "bad".into(),
        };
        assert_eq!(env.to_string(), "$RT_REDIS_PORT: storage.redis.port: bad");
        let errors = ConfigErrors(vec![d.clone(), env]);
        assert_eq!(errors.to_string().lines().count(), 2);
    }
}

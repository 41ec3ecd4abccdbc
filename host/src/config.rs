//! The gateway's declarative TOML file: parsed, checked and resolved into [`Config`].
//!
//! Every mistake in the file is reported, not only the first, each with its position and the
//! field it concerns, the way a compiler reports errors:
//!
//! ```text
//! tollgate.toml:12:11: services[0].targets[1]: invalid target "127.0.0.1": expected host:port (or [ipv6]:port)
//! tollgate.toml:20:8: plugins[0].path: file not found: /etc/tollgate/plugins/mtls.wasm
//! ```
//!
//! Relative paths in the file resolve against the file's directory. The TOML is read twice over:
//! first into a spanned tree (syntax), then each section element is deserialized on its own into
//! spanned raw structs (unknown keys, wrong types), then resolved (values, files, references).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

pub use crate::proxy::forwarding::IpRange;
use crate::runtime::{self, RuntimeLimits};

mod checker;
mod client_headers;
mod defaults;
mod listeners;
mod origins;
mod plugins;
mod process;
mod raw;
mod resolved;
mod routes;
mod services;
mod spans;
mod values;

pub use defaults::*;
pub use origins::Origins;
pub use resolved::*;

use checker::{Checker, Names};
use raw::*;
use spans::remove_deepest_key;
pub(crate) use spans::{Segment, line_column, locate};
use values::{format_duration, format_size, is_hostname, is_tchar, parse_target, toml_to_json};
pub(crate) use values::{parse_duration, parse_size};

/// One mistake in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Path of the field, e.g. `plugins[1].path`; empty for TOML syntax errors.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded. The file's author is at fault in every case.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but has mistakes: syntax, unknown keys, wrong types or invalid values.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file as given.
        path: PathBuf,
        /// All mistakes found, in file order.
        problems: Vec<ConfigProblem>,
    },
}

impl ConfigError {
    /// The mistakes found (empty for [`ConfigError::Read`]).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let file = path.display();
    problems
        .iter()
        .map(|p| format!("{file}:{p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Checks `text` as the contents of the file at `path` (used for messages and to resolve
    /// relative paths; the file itself is not read).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base = base_dir(path);
        let mut cx = Checker {
            text,
            base,
            problems: Vec::new(),
            plugin_indexes: HashMap::new(),
        };
        let config = cx.check(text);
        let mut problems = cx.problems;
        match config {
            Some(mut config) if problems.is_empty() => {
                config.origins = Origins::new(path, text, cx.plugin_indexes);
                Ok(config)
            }
            _ => {
                problems.sort_by_key(|p| (p.line, p.column));
                Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                })
            }
        }
    }
}

/// The directory relative paths in the file at `path` resolve against, made absolute. A bare
/// file name's parent is the empty path, which means the current directory.
pub(crate) fn base_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests;

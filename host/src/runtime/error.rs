//! The runtime's two error types: a plugin that cannot be loaded, and a plugin call that failed.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_phases::Phase;

/// Why a plugin file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin {path}: cannot read file: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("plugin {path}: the file is empty")]
    Empty {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file is not WebAssembly.
    #[error("plugin {path}: not a WebAssembly module or component")]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file starts like WebAssembly but does not validate (truncated or corrupted).
    #[error("plugin {path}: invalid WebAssembly {kind} (truncated or corrupted?): {source}")]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// `module` or `component`.
        kind: &'static str,
        /// The validator's error, with the byte offset.
        #[source]
        source: wasmparser::BinaryReaderError,
    },
    /// A core module could not be turned into a component.
    #[error(
        "plugin {path}: cannot componentize the wasm32-wasip1 module (was it built with the \
         tollgate-sdk or wit-bindgen against wit/plugin.wit?): {source}"
    )]
    Componentize {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: ComponentizeError,
    },
    /// The component did not compile.
    #[error("plugin {path}: invalid component: {source:#}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's error.
        #[source]
        source: wasmtime::Error,
    },
    /// The plugin was built against another version of the WIT package.
    #[error(
        "plugin {path}: built against {found}, but this gateway implements \
         tollgate:plugin@{expected} (and loads plugins of 0.2.0 and 0.1.0); rebuild it with a \
         matching tollgate-sdk"
    )]
    WitVersion {
        /// The plugin file.
        path: PathBuf,
        /// The package and version the plugin uses.
        found: String,
        /// The version the host implements.
        expected: &'static str,
    },
    /// The plugin does not export the handler interface.
    #[error(
        "plugin {path}: missing export {missing} (is the plugin's impl marked #[tollgate_sdk::plugin]?)"
    )]
    MissingExport {
        /// The plugin file.
        path: PathBuf,
        /// The missing export.
        missing: &'static str,
    },
    /// The plugin imports something the sandbox does not provide.
    #[error("plugin {path}: imports what the gateway does not provide: {source:#}")]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// The linker's error, naming the import.
        #[source]
        source: wasmtime::Error,
    },
    /// `configure` or `phases` failed: configuration rejected, or a trap.
    #[error("plugin {name} ({path}): {source}")]
    Setup {
        /// The plugin's name.
        name: String,
        /// The plugin file.
        path: PathBuf,
        /// The failure.
        source: PluginError,
    },
}

/// Why wit-component could not wrap a core module into a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    /// The encoder refused the module (a missing or mismatched `component-type` section, an
    /// import the WASI adapter cannot satisfy, ...).
    #[error("{0:#}")]
    Encoder(#[source] anyhow::Error),
    /// wit-component panicked: its `component-type` metadata is corrupt. Holds the panic's
    /// message.
    #[error("its component-type metadata is corrupt ({0})")]
    CorruptMetadata(String),
}

/// Where in a plugin's life a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Creating an instance (pool exhausted, start function trapped).
    Instantiate,
    /// The `configure` export.
    Configure,
    /// A phase handler.
    Phase(Phase),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Instantiate => f.write_str("instantiation"),
            Stage::Configure => f.write_str("configure"),
            Stage::Phase(phase) => write!(f, "{phase} phase"),
        }
    }
}

/// What went wrong in a plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginFault {
    /// The handler returned an error.
    Failed(String),
    /// `configure` rejected the configuration.
    ConfigRejected(String),
    /// The call ran past its CPU deadline.
    Timeout(Duration),
    /// The instance tried to grow its memories and tables past its cap.
    MemoryLimit(usize),
    /// All live instances together would have passed the process-wide memory budget.
    MemoryBudget(usize),
    /// Every instance slot is taken: the gateway is at capacity. Never skipped as fail-open,
    /// since a skipped plugin could let through what it guards; the request gets a 503.
    AtCapacity(u32),
    /// The guest trapped (panic, unreachable, out-of-bounds access, ...).
    Trap(String),
    /// No instance could be created.
    Instantiate(String),
}

impl fmt::Display for PluginFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginFault::Failed(message) => write!(f, "returned an error: {message}"),
            PluginFault::ConfigRejected(message) => {
                write!(f, "rejected its configuration: {message}")
            }
            PluginFault::Timeout(limit) => {
                write!(f, "exceeded its time limit of {}ms", limit.as_millis())
            }
            PluginFault::MemoryLimit(limit) => {
                write!(f, "exceeded its memory limit of {} bytes", limit)
            }
            PluginFault::MemoryBudget(budget) => write!(
                f,
                "could not grow its memory: all plugin instances together are at the \
                 process-wide budget of {budget} bytes"
            ),
            PluginFault::AtCapacity(slots) => write!(
                f,
                "could not get an instance: all {slots} plugin instance slots are in use"
            ),
            PluginFault::Trap(message) => write!(f, "trapped: {message}"),
            PluginFault::Instantiate(message) => write!(f, "could not be instantiated: {message}"),
        }
    }
}

/// A plugin call failed. Only that call fails; the gateway and other plugins carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} failed in {stage}: {fault}")]
pub struct PluginError {
    /// The plugin's name.
    pub plugin: String,
    /// Where it failed.
    pub stage: Stage,
    /// What went wrong.
    pub fault: PluginFault,
}

impl PluginError {
    /// The phase the failure happened in, if it was in a phase handler.
    pub fn phase(&self) -> Option<Phase> {
        match self.stage {
            Stage::Phase(phase) => Some(phase),
            _ => None,
        }
    }

    /// Whether the gateway, not the plugin, ran out of room: no instance slot or no memory left
    /// in the process-wide budget. The request is then answered 503, and a fail-open plugin is
    /// not skipped.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self.fault,
            PluginFault::AtCapacity(_) | PluginFault::MemoryBudget(_)
        )
    }

    /// A short name of the failure's kind, for logs and metrics: `failed`, `config_rejected`,
    /// `timeout`, `memory_limit`, `memory_budget`, `at_capacity`, `trap`, `instantiate`.
    pub fn kind(&self) -> &'static str {
        match self.fault {
            PluginFault::Failed(_) => "failed",
            PluginFault::ConfigRejected(_) => "config_rejected",
            PluginFault::Timeout(_) => "timeout",
            PluginFault::MemoryLimit(_) => "memory_limit",
            PluginFault::MemoryBudget(_) => "memory_budget",
            PluginFault::AtCapacity(_) => "at_capacity",
            PluginFault::Trap(_) => "trap",
            PluginFault::Instantiate(_) => "instantiate",
        }
    }
}

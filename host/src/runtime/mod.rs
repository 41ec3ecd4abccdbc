//! The plugin runtime: one engine, plugins compiled once from files, a fresh sandboxed instance
//! per request (and per connection for the certificate phase).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::runtime::{PluginSpec, Runtime};
//!
//! let runtime = Runtime::new()?;
//! let plugin = runtime.load(PluginSpec::new("mtls", "plugins/mtls_auth.wasm")).await?;
//! println!("{} handles {}", plugin.name(), plugin.phases());
//! # Ok(()) }
//! ```

mod bindings;
mod capacity;
pub mod engine;
mod error;
mod host_api;
mod instance;
mod loader;
mod output;
mod slow_lane;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_phases::{Phase, PhaseSet};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

pub use self::bindings::{HANDLER_EXPORT, OLDER_WIT_VERSIONS, WIT_PACKAGE, WIT_VERSION};
pub use self::capacity::{Capacity, RuntimeLimits};
pub use self::engine::{DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_LIMIT, MAX_MEMORY_LIMIT};
pub use self::error::{LoadError, PluginError, PluginFault, Stage};
pub use self::host_api::NOT_TLS;
pub use self::instance::{PhaseCall, PluginInstance};
pub use self::loader::{WasmKind, componentize, wasm_kind};
pub use self::store::HostCall;
use self::store::PluginStore;

/// How to load one plugin: its file, its configuration and its limits.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The instance name used in logs and errors.
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// The configuration handed to `configure`, as JSON.
    pub config: serde_json::Value,
    /// Cap on each linear memory of an instance.
    pub memory_limit: usize,
    /// CPU deadline of each call.
    pub time_limit: Duration,
    /// Whether a failure of this plugin is logged and skipped instead of failing the request.
    pub fail_open: bool,
}

impl PluginSpec {
    /// A spec with an empty configuration and default limits.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            name: name.into(),
            path: path.into(),
            config: serde_json::Value::Object(Default::default()),
            memory_limit: DEFAULT_MEMORY_LIMIT,
            time_limit: DEFAULT_TIME_LIMIT,
            fail_open: false,
        }
    }

    /// The same spec with `config`.
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }
}

/// A loaded plugin, ready to be instantiated.
pub struct LoadedPlugin {
    name: Arc<str>,
    path: PathBuf,
    config_json: String,
    memory_limit: usize,
    time_limit: Duration,
    fail_open: bool,
    phases: PhaseSet,
    pre: bindings::PluginWorldPre<PluginStore>,
    capacity: Arc<Capacity>,
    /// Started when one of its calls runs out of time; see [`slow_lane`].
    quarantine: Arc<slow_lane::Quarantine>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The phases the plugin handles.
    pub fn phases(&self) -> PhaseSet {
        self.phases
    }

    /// Whether the plugin handles `phase`.
    pub fn handles(&self, phase: Phase) -> bool {
        self.phases.contains(phase)
    }

    /// Whether failures are skipped instead of failing the request.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Its cap on memories and tables, per instance.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// The slots and memory budget its instances draw from.
    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.capacity
    }

    /// A fresh, configured instance.
    pub async fn instantiate(
        self: &Arc<Self>,
        record_calls: bool,
    ) -> Result<PluginInstance, PluginError> {
        PluginInstance::new(self.clone(), record_calls).await
    }

    fn error(&self, stage: Stage, fault: PluginFault) -> PluginError {
        PluginError {
            plugin: self.name.to_string(),
            stage,
            fault,
        }
    }
}

/// The process's plugin runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<PluginStore>,
    /// Compiled components by the SHA-256 of their file's content: a file used by several
    /// plugin entries compiles once, and a reload recompiles only files whose content changed.
    components: Mutex<HashMap<ContentHash, Component>>,
    capacity: Arc<Capacity>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be built or the sandbox's imports linked.
    #[error("cannot start the plugin runtime: {0:#}")]
    Engine(wasmtime::Error),
    /// The thread that ticks the epoch (call deadlines) could not be started.
    #[error("cannot start the plugin runtime: epoch thread: {0}")]
    EpochThread(#[source] std::io::Error),
}

/// The SHA-256 of a plugin file's content.
type ContentHash = [u8; 32];

fn content_hash(path: &Path) -> Result<ContentHash, LoadError> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha2::Sha256::digest(&bytes).into())
}

impl Runtime {
    /// Starts the engine with the default [`RuntimeLimits`], its epoch ticker and the
    /// sandbox's linker.
    pub fn new() -> Result<Runtime, RuntimeError> {
        Runtime::with_limits(RuntimeLimits::default())
    }

    /// Starts the engine with `limits`, its epoch ticker and the sandbox's linker.
    pub fn with_limits(limits: RuntimeLimits) -> Result<Runtime, RuntimeError> {
        let engine = engine::build_engine(limits.max_instances).map_err(RuntimeError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| bindings::add_to_linker(&mut linker))
            .map_err(RuntimeError::Engine)?;
        engine::start_epoch_ticker(&engine).map_err(RuntimeError::EpochThread)?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                components: Mutex::new(HashMap::new()),
                capacity: Arc::new(Capacity::new(limits)),
            }),
        })
    }

    /// The slots and memory budget all plugins of this runtime share.
    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.inner.capacity
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Loads a plugin: compiles (or reuses) its component, links it against the sandbox, then
    /// instantiates it once to validate its configuration and learn its phases.
    pub async fn load(&self, spec: PluginSpec) -> Result<Arc<LoadedPlugin>, LoadError> {
        let component = self.component(&spec.path)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|err| LoadError::Link {
                path: spec.path.clone(),
                reason: format!("{err:#}"),
            })?;
        let pre = bindings::PluginWorldPre::new(instance_pre).map_err(|err| LoadError::Link {
            path: spec.path.clone(),
            reason: format!("{err:#}"),
        })?;
        let plugin = Arc::new(LoadedPlugin {
            name: spec.name.as_str().into(),
            path: spec.path.clone(),
            config_json: spec.config.to_string(),
            memory_limit: spec.memory_limit.min(MAX_MEMORY_LIMIT),
            time_limit: spec.time_limit,
            fail_open: spec.fail_open,
            phases: PhaseSet::EMPTY,
            pre,
            capacity: self.inner.capacity.clone(),
            quarantine: Arc::default(),
        });
        // One instance validates the configuration and says which phases the plugin handles.
        let probe = async {
            let mut instance = plugin.instantiate(false).await?;
            instance.declared_phases().await
        };
        let phases = probe.await.map_err(|source| LoadError::Setup {
            name: spec.name.clone(),
            path: spec.path.clone(),
            source,
        })?;
        // The probe instance is gone, so this is the only reference.
        let mut plugin = Arc::into_inner(plugin).expect("probe instance dropped");
        plugin.phases = phases.into_iter().collect();
        Ok(Arc::new(plugin))
    }

    fn component(&self, path: &Path) -> Result<Component, LoadError> {
        let hash = content_hash(path)?;
        if let Some(component) = self.lock_components().get(&hash) {
            return Ok(component.clone());
        }
        let component = loader::compile(&self.inner.engine, path)?;
        // Cached only when the file did not change while it compiled (a copy in progress).
        if content_hash(path)? == hash {
            self.lock_components().insert(hash, component.clone());
        }
        Ok(component)
    }

    fn lock_components(&self) -> std::sync::MutexGuard<'_, HashMap<ContentHash, Component>> {
        // The map holds only finished components; a panic elsewhere cannot leave it half-written.
        self.inner
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

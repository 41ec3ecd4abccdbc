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
mod call_cpu;
mod capacity;
pub mod engine;
mod error;
mod host_api;
mod images;
mod instance;
mod loader;
mod output;
mod slow_lane;
mod small_adapter;
mod snapshot;
mod store;
mod ticker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tollgate_phases::{Phase, PhaseSet};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

pub use self::bindings::{HANDLER_EXPORT, OLDER_WIT_VERSIONS, WIT_PACKAGE, WIT_VERSION};
pub use self::capacity::{Capacity, RuntimeLimits};
pub use self::engine::{DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_LIMIT, MAX_MEMORY_LIMIT};
pub use self::error::{ComponentizeError, LoadError, PluginError, PluginFault, Stage};
pub use self::host_api::NOT_TLS;
pub use self::instance::{PhaseCall, PluginInstance};
pub use self::loader::{WasmKind, componentize, gets_small_adapter, wasm_kind};
pub use self::slow_lane::STRAIGHT_TO_LANE_AFTER;
pub use self::store::HostCall;
use self::store::{Budget, PluginStore};

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

/// What a plugin's fresh instances start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartImage {
    /// A snapshot taken after `configure`: instances start configured.
    Configured,
    /// The plugin's own image: `configure` runs in every instance first, for the reason given
    /// (wizer refused the component, `configure` left host resources, snapshots are off).
    Unconfigured(Arc<str>),
}

/// A loaded plugin: how its instances are made, and the phases its first instance declared.
pub struct LoadedPlugin {
    prepared: Arc<PreparedPlugin>,
    path: PathBuf,
    fail_open: bool,
    phases: PhaseSet,
}

/// What every instance of a plugin is made from: its linked image, its configuration and its
/// limits. A [`LoadedPlugin`] is one of these plus the phases its first instance declared, so a
/// plugin whose phases are not yet known cannot be put in a chain.
struct PreparedPlugin {
    name: Arc<str>,
    config_json: String,
    memory_limit: usize,
    time_limit: Duration,
    image: StartImage,
    pre: bindings::PluginWorldPre<PluginStore>,
    capacity: Arc<Capacity>,
    /// Started when one of its calls runs out of time; see [`slow_lane`].
    quarantine: Arc<slow_lane::Quarantine>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.prepared.name)
            .field("path", &self.path)
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The instance name.
    pub fn name(&self) -> &str {
        &self.prepared.name
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
        self.prepared.memory_limit
    }

    /// The slots and memory budget its instances draw from.
    pub fn capacity(&self) -> &Arc<Capacity> {
        &self.prepared.capacity
    }

    /// What its fresh instances start from.
    pub fn start_image(&self) -> &StartImage {
        &self.prepared.image
    }

    /// A fresh, configured instance.
    pub async fn instantiate(&self, record_calls: bool) -> Result<PluginInstance, PluginError> {
        PluginInstance::new(self.prepared.clone(), record_calls, Budget::Serving).await
    }
}

impl PreparedPlugin {
    fn starts_configured(&self) -> bool {
        self.image == StartImage::Configured
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
    /// Compiled images by content, so a file or (file, configuration) compiles once.
    images: images::ImageCache,
    /// Whether plugins get configured snapshots (off only to measure what they save).
    snapshots: Snapshots,
    capacity: Arc<Capacity>,
}

/// Whether a runtime snapshots plugins after `configure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Snapshots {
    /// Each (plugin file, configuration) is configured once at load and snapshotted; plugins
    /// that cannot be snapshotted configure every instance, which is logged at load.
    #[default]
    On,
    /// Every instance runs `configure` (to measure what snapshots save).
    Off,
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

impl Runtime {
    /// Starts the engine with the default [`RuntimeLimits`], its epoch ticker and the
    /// sandbox's linker.
    pub fn new() -> Result<Runtime, RuntimeError> {
        Runtime::with_limits(RuntimeLimits::default())
    }

    /// Starts the engine with `limits`, its epoch ticker and the sandbox's linker.
    pub fn with_limits(limits: RuntimeLimits) -> Result<Runtime, RuntimeError> {
        Runtime::with_options(limits, Snapshots::On)
    }

    /// Starts the engine with `limits` and snapshots `snapshots`, its epoch ticker and the
    /// sandbox's linker.
    pub fn with_options(
        limits: RuntimeLimits,
        snapshots: Snapshots,
    ) -> Result<Runtime, RuntimeError> {
        let engine = engine::build_engine(limits.max_instances).map_err(RuntimeError::Engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| bindings::add_to_linker(&mut linker))
            .map_err(RuntimeError::Engine)?;
        ticker::start_epoch_ticker(&engine).map_err(RuntimeError::EpochThread)?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                images: images::ImageCache::default(),
                snapshots,
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

    /// Loads a plugin: compiles (or reuses) its image, runs `configure` once and snapshots the
    /// configured instance (or reuses the snapshot of the same file and configuration), then
    /// instantiates it once to validate it and learn its phases.
    pub async fn load(&self, spec: PluginSpec) -> Result<Arc<LoadedPlugin>, LoadError> {
        let engine = &self.inner.engine;
        let (digest, file) = self.inner.images.file(engine, &spec.path).await?;
        let config_json = spec.config.to_string();
        let (component, image) = match self.snapshot(&spec, digest, &file, &config_json).await? {
            Ok(component) => (component, StartImage::Configured),
            Err(reason) => {
                if self.inner.snapshots == Snapshots::On {
                    tracing::warn!(
                        plugin = %spec.name,
                        path = %spec.path.display(),
                        "plugin has no configured snapshot, so configure runs in every \
                         instance: {reason}"
                    );
                }
                (
                    file.plain(engine, &spec.path).await?,
                    StartImage::Unconfigured(reason),
                )
            }
        };
        let prepared = Arc::new(self.prepare(&spec, &component, config_json, image)?);
        // One instance validates the image and says which phases the plugin handles.
        let probe = async {
            let mut instance =
                PluginInstance::new(prepared.clone(), false, Budget::Loading).await?;
            instance.declared_phases().await
        };
        let phases = probe.await.map_err(|source| LoadError::Setup {
            name: spec.name.clone(),
            path: spec.path.clone(),
            source,
        })?;
        Ok(Arc::new(LoadedPlugin {
            prepared,
            path: spec.path,
            fail_open: spec.fail_open,
            phases: phases.into_iter().collect(),
        }))
    }

    /// The configured snapshot of `file` with `config_json`, taken on first need; or why there
    /// is none. Fails when the plugin refuses the configuration or fails in `configure`.
    async fn snapshot(
        &self,
        spec: &PluginSpec,
        digest: images::Digest,
        file: &images::FileImage,
        config_json: &str,
    ) -> Result<images::SnapshotOutcome, LoadError> {
        if self.inner.snapshots == Snapshots::Off {
            return Ok(Err("snapshots are off".into()));
        }
        let instrumented = match &file.instrumented {
            Ok(instrumented) => instrumented,
            Err(reason) => return Ok(Err(reason.as_str().into())),
        };
        let cell = self.inner.images.snapshot(digest, config_json);
        let outcome = cell.get_or_try_init(|| async {
            let unconfigured = StartImage::Unconfigured("being snapshotted".into());
            let plugin =
                Arc::new(self.prepare(spec, instrumented, config_json.to_owned(), unconfigured)?);
            let taken = snapshot::take(&plugin, file.bytes.clone())
                .await
                .map_err(|source| LoadError::Setup {
                    name: spec.name.clone(),
                    path: spec.path.clone(),
                    source,
                })?;
            Ok::<_, LoadError>(match taken {
                Ok(bytes) => Component::new(&self.inner.engine, &bytes)
                    .map_err(|err| format!("its snapshot does not compile: {err:#}").into()),
                Err(reason) => Err(reason.into()),
            })
        });
        Ok(outcome.await?.clone())
    }

    /// What the instances of `spec`'s plugin are made from, starting from `component`.
    fn prepare(
        &self,
        spec: &PluginSpec,
        component: &Component,
        config_json: String,
        image: StartImage,
    ) -> Result<PreparedPlugin, LoadError> {
        let link_error = |source| LoadError::Link {
            path: spec.path.clone(),
            source,
        };
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(component)
            .map_err(link_error)?;
        let pre = bindings::PluginWorldPre::new(instance_pre).map_err(link_error)?;
        Ok(PreparedPlugin {
            name: spec.name.as_str().into(),
            config_json,
            memory_limit: spec.memory_limit.min(MAX_MEMORY_LIMIT),
            time_limit: spec.time_limit,
            image,
            pre,
            capacity: self.inner.capacity.clone(),
            quarantine: Arc::default(),
        })
    }
}

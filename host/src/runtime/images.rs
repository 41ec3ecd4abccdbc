//! Compiled plugin images, cached by content: a file's component (and the form wizer
//! instruments for snapshots) is compiled once per distinct content, and a configured snapshot
//! once per (content, configuration), however many plugin entries, paths or reloads name them.
//!
//! The cache lives as long as the runtime and holds every image loaded so far: a process that
//! reloads many distinct files or configurations keeps their compiled code until it restarts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime_wizer::Wizer;

use super::error::LoadError;
use super::loader;

/// SHA-256 of a plugin file's bytes.
pub(super) type Digest = [u8; 32];

/// One plugin file's content, compiled.
pub(super) struct FileImage {
    /// The component's bytes (a core module already componentized), which snapshots rewrite.
    pub bytes: Arc<[u8]>,
    /// Compiled with wizer's instrumentation, or why wizer cannot snapshot the component.
    pub instrumented: Result<Component, String>,
    /// Compiled as it is: what instances start from when there is no snapshot. Compiled on
    /// first need, since a plugin that snapshots never needs it.
    plain: OnceCell<Component>,
}

impl FileImage {
    /// The component as it is, compiled once.
    pub async fn plain(&self, engine: &Engine, path: &Path) -> Result<Component, LoadError> {
        self.plain
            .get_or_try_init(|| async { loader::compile(engine, &self.bytes, path) })
            .await
            .cloned()
    }
}

/// What a snapshot attempt left: the configured image, or why there is none.
pub(super) type SnapshotOutcome = Result<Component, Arc<str>>;

/// The cache. Each entry is a cell filled by the first load that needs it; a load that fails
/// (an unreadable file, a configuration the plugin refuses) leaves its cell empty.
#[derive(Default)]
pub(super) struct ImageCache {
    files: Cells<Digest, Arc<FileImage>>,
    /// By file content and configuration JSON.
    snapshots: Cells<(Digest, String), SnapshotOutcome>,
}

/// Cells by key, each filled once.
type Cells<K, V> = Mutex<HashMap<K, Arc<OnceCell<V>>>>;

impl ImageCache {
    /// Reads `path` and returns its compiled image, from the cache when its content was seen.
    pub async fn file(
        &self,
        engine: &Engine,
        path: &Path,
    ) -> Result<(Digest, Arc<FileImage>), LoadError> {
        let bytes = loader::read(path)?;
        let digest: Digest = Sha256::digest(&bytes).into();
        let cell = cell(&self.files, digest);
        let image = cell
            .get_or_try_init(|| async { compile_file(engine, bytes, path).map(Arc::new) })
            .await?;
        Ok((digest, image.clone()))
    }

    /// The cell holding the snapshot of `digest` configured with `config_json`.
    pub fn snapshot(&self, digest: Digest, config_json: &str) -> Arc<OnceCell<SnapshotOutcome>> {
        cell(&self.snapshots, (digest, config_json.to_owned()))
    }
}

fn cell<K: std::hash::Hash + Eq, V>(map: &Cells<K, V>, key: K) -> Arc<OnceCell<V>> {
    // Only whole cells go in; a panic elsewhere cannot leave the map half-written.
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.entry(key).or_default().clone()
}

/// Validates, componentizes if needed, and compiles the instrumented form (or, when wizer
/// refuses the component, the plain form, so the file's errors are reported at load either
/// way).
fn compile_file(engine: &Engine, bytes: Vec<u8>, path: &Path) -> Result<FileImage, LoadError> {
    let bytes = loader::component_bytes(bytes, path)?;
    let instrumented = match instrument(&bytes) {
        Ok(instrumented) => match loader::compile(engine, &instrumented, path) {
            Ok(component) => Ok(component),
            // A version mismatch or a missing export is the plugin's error, not wizer's.
            Err(err @ (LoadError::WitVersion { .. } | LoadError::MissingExport { .. })) => {
                return Err(err);
            }
            Err(err) => Err(format!("its instrumented form does not compile: {err}")),
        },
        Err(reason) => Err(reason),
    };
    let image = FileImage {
        bytes: bytes.into(),
        instrumented,
        plain: OnceCell::new(),
    };
    if image.instrumented.is_err() {
        // Compile now, so a file that cannot load says so here.
        let plain = loader::compile(engine, &image.bytes, path)?;
        let _ = image.plain.set(plain);
    }
    Ok(image)
}

/// The wizer settings of every snapshot: `configure` stays exported (it is called through the
/// plugin's own interface, never as wizer's init function).
pub(super) fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    wizer.keep_init_func(true);
    wizer
}

/// The component with wizer's accessors added, or why wizer refuses it (instructions it cannot
/// replay such as `table.grow` or `data.drop`, a shape it does not support).
fn instrument(bytes: &[u8]) -> Result<Vec<u8>, String> {
    wizer()
        .instrument_component(bytes)
        .map(|(_, instrumented)| instrumented)
        .map_err(|err| format!("wizer cannot instrument it: {err:#}"))
}

//! Turning a `.wasm` file into a compiled, checked component.
//!
//! A wasm32-wasip1 core module (what `cargo build --target wasm32-wasip1` and clang produce) is
//! componentized here with the WASI preview1 reactor adapter, so plugin authors never run an extra
//! tool; a ready component (componentize-py, jco) is taken as is.

use std::path::Path;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::{HANDLER_EXPORT, WIT_PACKAGE, WIT_VERSION};
use super::error::LoadError;

/// What kind of wasm a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core module, to be componentized.
    CoreModule,
    /// A component.
    Component,
}

/// Tells a core module from a component by the header.
pub fn wasm_kind(bytes: &[u8]) -> Option<WasmKind> {
    if wasmparser::Parser::is_component(bytes) {
        Some(WasmKind::Component)
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        Some(WasmKind::CoreModule)
    } else {
        None
    }
}

/// Wraps a wasm32-wasip1 core module into a component, adapting WASI preview1 to preview2.
pub fn componentize(module: &[u8], path: &Path) -> Result<Vec<u8>, LoadError> {
    let fail = |err: anyhow::Error| LoadError::Componentize {
        path: path.to_path_buf(),
        reason: format!("{err:#}"),
    };
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(fail)?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .map_err(fail)?
        .validate(true)
        .encode()
        .map_err(fail)
}

/// Reads, componentizes if needed, compiles, and checks the plugin's WIT package version.
pub fn compile(engine: &Engine, path: &Path) -> Result<Component, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let component_bytes = match wasm_kind(&bytes) {
        Some(WasmKind::Component) => bytes,
        Some(WasmKind::CoreModule) => componentize(&bytes, path)?,
        None => {
            return Err(LoadError::NotWasm {
                path: path.to_path_buf(),
            });
        }
    };
    let component = Component::new(engine, &component_bytes).map_err(|err| LoadError::Compile {
        path: path.to_path_buf(),
        reason: format!("{err:#}"),
    })?;
    check_interface(engine, &component, path)?;
    Ok(component)
}

/// Checks that the plugin speaks this host's version of `tollgate:plugin`, so a mismatch is
/// reported as such instead of as a missing import.
fn check_interface(engine: &Engine, component: &Component, path: &Path) -> Result<(), LoadError> {
    let ty = component.component_type();
    let ours = format!("{WIT_PACKAGE}/");
    let names = ty
        .imports(engine)
        .map(|(name, _)| name)
        .chain(ty.exports(engine).map(|(name, _)| name));
    for name in names {
        let Some(rest) = name.strip_prefix(&ours) else {
            continue;
        };
        let version = rest.split_once('@').map(|(_, version)| version);
        if version != Some(WIT_VERSION) {
            return Err(LoadError::WitVersion {
                path: path.to_path_buf(),
                found: match version {
                    Some(version) => format!("{WIT_PACKAGE}@{version}"),
                    None => format!("{WIT_PACKAGE} (unversioned)"),
                },
                expected: WIT_VERSION,
            });
        }
    }
    if ty.get_export(engine, HANDLER_EXPORT).is_none() {
        return Err(LoadError::MissingExport {
            path: path.to_path_buf(),
            missing: HANDLER_EXPORT,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_modules_components_and_junk_apart() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Some(WasmKind::CoreModule));
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(wasm_kind(b"#!/bin/sh\n"), None);
    }
}

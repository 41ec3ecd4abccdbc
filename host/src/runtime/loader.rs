//! Turning a `.wasm` file into a compiled, checked component.
//!
//! A wasm32-wasip1 core module (what `cargo build --target wasm32-wasip1` and clang produce) is
//! componentized here with the WASI preview1 reactor adapter, so plugin authors never run an extra
//! tool; a ready component (componentize-py, jco) is taken as is.
//!
//! A file of any shape is answered with an error, never a panic: the bytes are validated before
//! wit-component or wasmtime sees them (wit-component assumes a valid module and panics on a
//! truncated one), and a panic that still escapes wit-component is caught and reported.

use std::path::Path;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings::{HANDLER_EXPORT, OLDER_WIT_VERSIONS, WIT_PACKAGE, WIT_VERSION};
use super::error::{ComponentizeError, LoadError};
use super::small_adapter;

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

/// Checks that `bytes` are a complete, valid module or component of the kind the header says.
pub fn validate(bytes: &[u8], path: &Path) -> Result<WasmKind, LoadError> {
    if bytes.is_empty() {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let Some(kind) = wasm_kind(bytes) else {
        return Err(LoadError::NotWasm {
            path: path.to_path_buf(),
        });
    };
    wasmparser::Validator::new()
        .validate_all(bytes)
        .map_err(|err| LoadError::Invalid {
            path: path.to_path_buf(),
            kind: match kind {
                WasmKind::CoreModule => "module",
                WasmKind::Component => "component",
            },
            source: err,
        })?;
    Ok(kind)
}

/// Wraps a wasm32-wasip1 core module into a component, adapting WASI preview1 to preview2.
/// The module is validated first.
pub fn componentize(module: &[u8], path: &Path) -> Result<Vec<u8>, LoadError> {
    validate(module, path)?;
    let fail = |source| LoadError::Componentize {
        path: path.to_path_buf(),
        source,
    };
    // A module that imports only what Rust's panic path needs gets the small adapter.
    let adapter = if gets_small_adapter(module) {
        small_adapter::bytes()
    } else {
        WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    let encode = || {
        wit_component::ComponentEncoder::default()
            .module(module)?
            .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)?
            .validate(true)
            .encode()
    };
    // A valid module can still carry a corrupt `component-type` section, which wit-component
    // decodes with less care than the validator; its panics must not take the process down.
    match std::panic::catch_unwind(encode) {
        Ok(result) => result.map_err(|err| fail(ComponentizeError::Encoder(err))),
        Err(panic) => Err(fail(ComponentizeError::CorruptMetadata(
            panic_message(&*panic).to_owned(),
        ))),
    }
}

/// Whether componentizing the core module `module` links in the small WASI adapter (it imports
/// from WASI preview 1 only what Rust's panic path needs) instead of the standard one.
pub fn gets_small_adapter(module: &[u8]) -> bool {
    small_adapter::suffices(preview1_imports(module))
}

/// The names of the WASI preview 1 functions a (validated) core module imports.
fn preview1_imports(module: &[u8]) -> impl Iterator<Item = &str> {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .filter_map(|payload| match payload {
            Ok(wasmparser::Payload::ImportSection(section)) => Some(section),
            _ => None,
        })
        .flat_map(|section| section.into_imports())
        .filter_map(|import| import.ok())
        .filter(|import| import.module == small_adapter::MODULE)
        .map(|import| import.name)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("wit-component panicked")
}

/// Reads a plugin file: its bytes as they are on disk, hashed by the image cache.
pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Validates a file's bytes and componentizes them if they are a core module.
pub fn component_bytes(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, LoadError> {
    match validate(&bytes, path)? {
        WasmKind::Component => Ok(bytes),
        WasmKind::CoreModule => componentize(&bytes, path),
    }
}

/// Compiles component bytes and checks the plugin's WIT package version.
pub fn compile(engine: &Engine, bytes: &[u8], path: &Path) -> Result<Component, LoadError> {
    let component = Component::new(engine, bytes).map_err(|source| LoadError::Compile {
        path: path.to_path_buf(),
        source,
    })?;
    check_interface(engine, &component, path)?;
    Ok(component)
}

/// Checks that the plugin speaks this host's version of `tollgate:plugin` (or an older one it
/// still loads), so a mismatch is reported as such instead of as a missing import.
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
        let supported = |v| v == WIT_VERSION || OLDER_WIT_VERSIONS.contains(&v);
        if !version.is_some_and(supported) {
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
    let handler_of = |version: &str| format!("{WIT_PACKAGE}/handler@{version}");
    let exports_a_handler = std::iter::once(WIT_VERSION)
        .chain(OLDER_WIT_VERSIONS.iter().copied())
        .any(|version| ty.get_export(engine, &handler_of(version)).is_some());
    if !exports_a_handler {
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

    #[test]
    fn a_truncated_module_keeps_the_validators_error_as_its_source() {
        let err = validate(b"\0asm\x01\0\0\0\x01", Path::new("cut.wasm")).unwrap_err();
        let LoadError::Invalid {
            kind: "module",
            source,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(
            err.to_string().starts_with(
                "plugin cut.wasm: invalid WebAssembly module (truncated or corrupted?): "
            ) && err.to_string().ends_with(&source.to_string()),
            "{err}"
        );
        let reported = std::error::Error::source(&err).expect("a source");
        assert!(reported.is::<wasmparser::BinaryReaderError>());
    }
}

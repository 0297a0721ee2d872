//! Plugin files: telling components from core modules and compiled
//! artifacts, compiling components through the artifact cache (or loading a
//! compiled artifact as it is), compiling ahead of time, and listing what a
//! component imports and exports.

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

use super::cache::{self, ArtifactCache, CacheOutcome};
use super::load_error::LoadError;
use crate::wasm_kind::WasmKind;

/// Whether `bytes` are a component's `.wasm` (not a core module, not a
/// compiled artifact).
pub fn is_component(bytes: &[u8]) -> bool {
    WasmKind::of(bytes) == WasmKind::Component
}

/// Reads `path`, refusing anything but a component (as `.wasm`).
fn read_component(path: &Path) -> Result<Vec<u8>, LoadError> {
    let bytes = read(path)?;
    match WasmKind::of(&bytes) {
        WasmKind::Component => Ok(bytes),
        WasmKind::CoreModule => Err(LoadError::CoreModule(path.to_path_buf())),
        WasmKind::Precompiled => Err(LoadError::Invalid(
            path.to_path_buf(),
            "this is already a compiled artifact; compile the .wasm it came from".to_string(),
        )),
        WasmKind::OtherNative | WasmKind::NotWasm => Err(LoadError::NotWasm(path.to_path_buf())),
    }
}

/// Reads a plugin file, naming it in the error.
pub(super) fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound(path.to_path_buf()),
        _ => LoadError::Unreadable(path.to_path_buf(), e.to_string()),
    })
}

/// Compiles a component ahead of time for this engine (`iicp-host compile`).
pub(super) fn precompile(engine: &Engine, path: &Path) -> Result<Vec<u8>, LoadError> {
    let bytes = read_component(path)?;
    engine
        .precompile_component(&bytes)
        .map_err(|e| LoadError::Invalid(path.to_path_buf(), format!("{e:#}")))
}

/// A plugin file's identity: the hex SHA-256 of its bytes. It keys the
/// artifact cache, and a reload keeps a plugin whose file still has it.
pub fn plugin_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads and compiles a plugin (see [`compile_bytes`]).
fn read_and_compile(
    engine: &Engine,
    cache: Option<&ArtifactCache>,
    path: &Path,
    precompiled: PrecompiledPolicy,
) -> Result<(Component, String), LoadError> {
    let bytes = read(path)?;
    let sha256 = plugin_sha256(&bytes);
    let (component, _) = compile_bytes(engine, cache, path, &bytes, &sha256, precompiled)?;
    Ok((component, sha256))
}

/// Whether a plugin file may be a compiled artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecompiledPolicy {
    /// Only a `.wasm` component: the default, and always for a plugin
    /// pulled from a registry.
    Refuse,
    /// The operator named this local file as one they compiled
    /// (`precompiled = true`, `--precompiled`).
    Allow,
}

/// Compiles a plugin file's bytes: a `.wasm` component through the artifact
/// cache, or — only with [`PrecompiledPolicy::Allow`] — a compiled artifact
/// from `iicp-host compile` as it is.
///
/// A compiled artifact is native code that wasmtime cannot validate the way
/// it validates wasm: it runs with the node's full power. Hence the opt-in,
/// per local file: load only artifacts you compiled yourself with the same
/// build of iicp-host.
pub(super) fn compile_bytes(
    engine: &Engine,
    cache: Option<&ArtifactCache>,
    path: &Path,
    bytes: &[u8],
    sha256: &str,
    precompiled: PrecompiledPolicy,
) -> Result<(Component, CacheOutcome), LoadError> {
    match WasmKind::of(bytes) {
        WasmKind::Component => cache::load_or_compile(engine, cache, bytes, sha256)
            .map_err(|e| LoadError::Invalid(path.to_path_buf(), format!("{e:#}"))),
        WasmKind::Precompiled if precompiled == PrecompiledPolicy::Refuse => {
            Err(LoadError::PrecompiledNotAllowed(path.to_path_buf()))
        }
        WasmKind::Precompiled
            if Engine::detect_precompiled(bytes) == Some(Precompiled::Component) =>
        {
            // SAFETY: see above — the operator vouches for the artifact.
            let component = unsafe { Component::deserialize(engine, bytes) }.map_err(|e| {
                LoadError::Invalid(
                    path.to_path_buf(),
                    format!(
                        "{e:#} (compile the .wasm again with this iicp-host: iicp-host compile)"
                    ),
                )
            })?;
            Ok((component, CacheOutcome::Precompiled))
        }
        WasmKind::Precompiled | WasmKind::CoreModule => {
            Err(LoadError::CoreModule(path.to_path_buf()))
        }
        WasmKind::OtherNative | WasmKind::NotWasm => Err(LoadError::NotWasm(path.to_path_buf())),
    }
}

/// What a component declares, for `iicp-host check`.
#[derive(Debug, Clone)]
pub struct ComponentFacts {
    /// Size of the file.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Everything it imports.
    pub imports: Vec<String>,
    /// Everything it exports.
    pub exports: Vec<String>,
}

/// Lists a component's imports and exports.
pub(super) fn inspect(
    engine: &Engine,
    cache: Option<&ArtifactCache>,
    path: &Path,
    precompiled: PrecompiledPolicy,
) -> Result<ComponentFacts, LoadError> {
    let (component, sha256) = read_and_compile(engine, cache, path, precompiled)?;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let component_type = component.component_type();
    Ok(ComponentFacts {
        size,
        sha256,
        imports: component_type
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: component_type
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    })
}

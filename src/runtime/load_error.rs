//! Why a plugin could not be loaded: one line an operator can act on, shared
//! by every step of loading (`artifact`, `shared`, `plugin`).

use std::fmt;
use std::path::PathBuf;

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// No file at the path.
    NotFound(PathBuf),
    /// The file exists but cannot be read.
    Unreadable(PathBuf, String),
    /// The file is not WebAssembly at all.
    NotWasm(PathBuf),
    /// A core module rather than a component.
    CoreModule(PathBuf),
    /// Wasm that does not validate or compile.
    Invalid(PathBuf, String),
    /// A compiled artifact (native code) at a path not opted in for one.
    PrecompiledNotAllowed(PathBuf),
    /// A component that does not target the `iicp:plugin` world.
    WrongWorld(PathBuf, String),
    /// `describe` trapped, timed out or returned nonsense.
    BadDescriptor(PathBuf, String),
    /// The plugin's settings are unusable (e.g. a malformed allow-list pattern).
    BadSettings(PathBuf, String),
    /// An `oci://` reference could not be pulled.
    Fetch(PathBuf, String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound(path) => write!(f, "plugin file not found: {}", path.display()),
            LoadError::Unreadable(path, why) => {
                write!(f, "cannot read plugin {}: {why}", path.display())
            }
            LoadError::NotWasm(path) => write!(f, "{} is not a WebAssembly file", path.display()),
            LoadError::CoreModule(path) => write!(
                f,
                "{} is a core WebAssembly module, not a component: build the plugin for the \
                 wasm32-wasip2 target against wit/plugin.wit",
                path.display()
            ),
            LoadError::Invalid(path, why) => {
                write!(f, "{} is not a valid component: {why}", path.display())
            }
            LoadError::PrecompiledNotAllowed(path) => write!(
                f,
                "{} is a compiled artifact (native code the node would run as itself), not a \
                 .wasm component: load it only if you compiled it, with `precompiled = true` in \
                 its [[plugin]] table or --precompiled",
                path.display()
            ),
            LoadError::WrongWorld(path, why) => write!(
                f,
                "{} does not fit the iicp:plugin world: {why}",
                path.display()
            ),
            LoadError::BadSettings(path, why) => write!(f, "{}: {why}", path.display()),
            LoadError::Fetch(location, why) => {
                write!(f, "cannot pull {}: {why}", location.display())
            }
            LoadError::BadDescriptor(path, why) => {
                write!(f, "{} failed to describe itself: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for LoadError {}

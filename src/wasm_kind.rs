//! What a plugin file is, by its first bytes: a WebAssembly component, a
//! core module, a compiled wasmtime artifact (native code), or something
//! else. The runtime and the OCI puller both decide by it, so a file is
//! never a component to one and native code to the other.

use wasmtime::Engine;

/// The kinds of file a plugin path or a registry layer can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// `\0asm`, then the component layer and version (`0d 00 01 00`).
    Component,
    /// `\0asm`, then version 1: a core module.
    CoreModule,
    /// A compiled wasmtime artifact (`iicp-host compile`): an ELF file of
    /// native code, which wasmtime cannot validate.
    Precompiled,
    /// Native code of another kind (an ELF file wasmtime did not write).
    OtherNative,
    /// Anything else.
    NotWasm,
}

/// ELF's magic: compiled artifacts are ELF files.
const ELF_MAGIC: &[u8] = b"\x7fELF";

impl WasmKind {
    /// Classifies `bytes` by their header.
    pub fn of(bytes: &[u8]) -> WasmKind {
        if Engine::detect_precompiled(bytes).is_some() {
            return WasmKind::Precompiled;
        }
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => WasmKind::CoreModule,
            Some([0, b'a', b's', b'm', _, _, 1, 0]) => WasmKind::Component,
            _ if bytes.starts_with(ELF_MAGIC) => WasmKind::OtherNative,
            _ => WasmKind::NotWasm,
        }
    }

    /// What the bytes are, for an error line ("a core WebAssembly module").
    pub fn description(self) -> &'static str {
        match self {
            WasmKind::Component => "a WebAssembly component",
            WasmKind::CoreModule => "a core WebAssembly module",
            WasmKind::Precompiled => "a compiled wasmtime artifact (native code, ELF)",
            WasmKind::OtherNative => "native code (ELF)",
            WasmKind::NotWasm => "not WebAssembly",
        }
    }

    /// Leading bytes enough to tell a component from anything else (a
    /// compiled artifact is told from other ELF files only by its whole
    /// file).
    pub const HEADER_BYTES: usize = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_classified() {
        assert_eq!(WasmKind::of(b"\0asm\x01\0\0\0"), WasmKind::CoreModule);
        assert_eq!(WasmKind::of(b"\0asm\x0d\0\x01\0rest"), WasmKind::Component);
        assert_eq!(
            WasmKind::of(b"\x7fELF\x02\x01\x01\0"),
            WasmKind::OtherNative
        );
        assert_eq!(WasmKind::of(b"hello world"), WasmKind::NotWasm);
        assert_eq!(WasmKind::of(b""), WasmKind::NotWasm);
        let engine = Engine::default();
        let compiled = engine
            .precompile_component(b"\0asm\x0d\0\x01\0")
            .expect("an empty component compiles");
        assert_eq!(WasmKind::of(&compiled), WasmKind::Precompiled);
    }
}

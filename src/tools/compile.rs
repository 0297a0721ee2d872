//! `iicp-host compile PLUGIN -o OUT`: ahead-of-time compilation. `run`
//! loads the artifact without compiling (it trusts it: load only artifacts
//! you compiled with the same iicp-host).

use std::path::Path;
use std::time::Instant;

/// Compiles `plugin` into `out`; returns a one-line summary.
pub fn compile(plugin: &Path, out: &Path) -> Result<String, String> {
    let runtime = super::runtime()?;
    let started = Instant::now();
    let artifact = runtime.precompile(plugin).map_err(|e| e.to_string())?;
    std::fs::write(out, &artifact).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let size = std::fs::metadata(plugin).map_or(0, |m| m.len());
    Ok(format!(
        "compiled {} ({size} bytes) into {} ({} bytes) in {:.0} ms",
        plugin.display(),
        out.display(),
        artifact.len(),
        started.elapsed().as_secs_f64() * 1000.0
    ))
}

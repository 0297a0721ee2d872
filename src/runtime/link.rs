//! Checking a compiled component against the host's `iicp:plugin` world and
//! pre-instantiating it with every host capability.

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::bindings::PluginPre;
use super::store::TaskState;

/// The export every plugin must provide.
pub const HANDLER_EXPORT: &str = "iicp:plugin/handler@0.1.0";

/// Checks the component's exports and imports against the host's world.
pub(super) fn link(
    engine: &Engine,
    linker: &Linker<TaskState>,
    component: &Component,
) -> Result<PluginPre<TaskState>, String> {
    let component_type = component.component_type();
    if component_type.get_export(engine, HANDLER_EXPORT).is_none() {
        let exports: Vec<&str> = component_type
            .exports(engine)
            .map(|(name, _)| name)
            .collect();
        let exports = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(format!(
            "it does not export {HANDLER_EXPORT} (it exports {exports})"
        ));
    }
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("{e:#}"))?;
    PluginPre::new(instance_pre).map_err(|e| format!("{e:#}"))
}

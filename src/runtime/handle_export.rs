//! A fresh instance's `handle` export, typechecked once per artifact instead
//! of once per instance.
//!
//! The generated `PluginPre::instantiate_async` looks up every export and
//! checks its type against the Rust signature on each instantiation (the
//! `Task` and `TaskOutput` records field by field): 0.4-0.8 µs of a fresh
//! task alone, more under load (`docs/performance.md`, "Fresh vs reused,
//! third round"). The type of an export belongs to the component, not to
//! the instance, so the first instantiation of an artifact goes through the
//! checked path and every later one only looks the function up by its
//! precomputed index.

use std::sync::OnceLock;

use wasmtime::AsContextMut;
use wasmtime::component::{ComponentExportIndex, Func, TypedFunc};

use super::bindings::{PluginPre, Task, TaskError, TaskOutput};
use super::link::HANDLER_EXPORT;
use super::store::TaskState;

/// Where an artifact's `handle` function sits, and whether its type has
/// been checked.
pub struct HandleExport {
    index: Option<ComponentExportIndex>,
    checked: OnceLock<()>,
}

impl HandleExport {
    /// The `handle` export of the component `pre` holds (`link` has
    /// checked that the handler interface is exported).
    pub fn of(pre: &PluginPre<TaskState>) -> Self {
        let component = pre.instance_pre().component();
        let index = component
            .get_export_index(None, HANDLER_EXPORT)
            .and_then(|handler| component.get_export_index(Some(&handler), "handle"));
        Self {
            index,
            checked: OnceLock::new(),
        }
    }
}

/// A live instance's `handle` function, of the checked type.
#[derive(Clone, Copy)]
pub struct HandleFunc(Func);

impl HandleFunc {
    /// Calls `handle(task)` on the instance's fiber.
    pub async fn call(
        &self,
        store: impl AsContextMut<Data = TaskState>,
        task: &Task,
    ) -> wasmtime::Result<Result<TaskOutput, TaskError>> {
        // SAFETY: a `HandleFunc` is only made from an instance of an
        // artifact whose `handle` export passed `TypedFunc`'s type check for
        // exactly this signature (`instantiate` below): the export's type is
        // fixed by the component, so every instance of it has that type.
        let typed = unsafe {
            TypedFunc::<(&Task,), (Result<TaskOutput, TaskError>,)>::new_unchecked(self.0)
        };
        let (result,) = typed.call_async(store, (task,)).await?;
        Ok(result)
    }
}

/// A fresh instance of `pre` in `store`, and its `handle` function.
pub async fn instantiate(
    pre: &PluginPre<TaskState>,
    export: &HandleExport,
    mut store: impl AsContextMut<Data = TaskState>,
) -> wasmtime::Result<HandleFunc> {
    if let (Some(index), Some(())) = (&export.index, export.checked.get()) {
        let instance = pre.instance_pre().instantiate_async(&mut store).await?;
        return instance
            .get_func(&mut store, index)
            .map(HandleFunc)
            .ok_or_else(|| wasmtime::format_err!("the handler's `handle` export is missing"));
    }
    // The generated path checks every export's type; remember that it did
    // (only when the index is known, so the fast path above can use it).
    let plugin = pre.instantiate_async(&mut store).await?;
    let func = *plugin.iicp_plugin_handler().func_handle().func();
    if export.index.is_some() {
        let _ = export.checked.set(());
    }
    Ok(HandleFunc(func))
}

//! Write an [iicp-host](https://github.com/) plugin in Rust: implement
//! [`Plugin`] and call [`export_plugin!`].
//!
//! ```ignore
//! use iicp_plugin_sdk::{Capability, Descriptor, Error, Output, Plugin, Task, export_plugin};
//!
//! struct Upper;
//!
//! impl Plugin for Upper {
//!     fn describe() -> Descriptor {
//!         Descriptor::new("upper", "0.1.0").capability(Capability::new("urn:iicp:intent:text:upper:v1"))
//!     }
//!     fn handle(task: Task) -> Result<Output, Error> {
//!         let text: String = task.payload_as()?;
//!         Output::json(&text.to_uppercase())
//!     }
//! }
//!
//! export_plugin!(Upper);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: the output is
//! already a component that `iicp-host run --plugin` serves. The host runs
//! every task in a fresh instance, so keep no state between tasks.
//!
//! * [`Task`], [`Output`], [`Error`], [`Descriptor`] — the contract, typed;
//! * [`chat`] — the OpenAI chat shape most intents use;
//! * [`http`] — outbound HTTP, to hosts the operator allowed;
//! * [`config`] — the plugin's configuration and secrets;
//! * [`log`] — leveled logging into the host's log.

#![deny(missing_docs)]

pub mod chat;
pub mod config;
mod contract;
pub mod http;
pub mod log;

pub use contract::{Capability, Descriptor, Error, ErrorKind, Output, Qos, Task, Usage};

/// Bindings generated from `wit/plugin.wit`; plugins need not touch them.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "iicp_plugin_sdk::bindings",
    });
}

/// A task handler. The host calls [`Plugin::describe`] once at load time
/// and [`Plugin::handle`] once per task, each in a fresh instance.
pub trait Plugin {
    /// Name, version and the intents served.
    fn describe() -> Descriptor;

    /// Handles one task.
    fn handle(task: Task) -> Result<Output, Error>;
}

/// Glue between the generated bindings and a [`Plugin`]; used by
/// [`export_plugin!`].
#[doc(hidden)]
pub mod __private {
    use super::Plugin;
    use super::bindings::exports::iicp::plugin::handler as wit;

    pub fn describe<P: Plugin>() -> wit::Descriptor {
        P::describe().into()
    }

    pub fn handle<P: Plugin>(task: wit::Task) -> Result<wit::TaskOutput, wit::TaskError> {
        P::handle(task.into()).map(Into::into).map_err(Into::into)
    }
}

/// Exports a [`Plugin`] as the component's `iicp:plugin/handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __IicpPluginExport;

        impl $crate::bindings::exports::iicp::plugin::handler::Guest for __IicpPluginExport {
            fn describe() -> $crate::bindings::exports::iicp::plugin::handler::Descriptor {
                $crate::__private::describe::<$plugin>()
            }

            fn handle(
                task: $crate::bindings::exports::iicp::plugin::handler::Task,
            ) -> ::core::result::Result<
                $crate::bindings::exports::iicp::plugin::handler::TaskOutput,
                $crate::bindings::exports::iicp::plugin::handler::TaskError,
            > {
                $crate::__private::handle::<$plugin>(task)
            }
        }

        $crate::bindings::export_bindings!(__IicpPluginExport with_types_in $crate::bindings);
    };
}

//! The {{name}} plugin for iicp-host.

use iicp_plugin_sdk::{Capability, Descriptor, Error, Output, Plugin, Task, export_plugin};
use serde::{Deserialize, Serialize};

const INTENT: &str = "urn:iicp:intent:example:{{name}}:v1";

#[derive(Deserialize)]
struct Request {
    text: String,
}

#[derive(Serialize)]
struct Reply {
    text: String,
    length: usize,
}

struct {{type_name}};

impl Plugin for {{type_name}} {
    fn describe() -> Descriptor {
        Descriptor::new("{{name}}", env!("CARGO_PKG_VERSION")).capability(Capability::new(INTENT))
    }

    fn handle(task: Task) -> Result<Output, Error> {
        let request: Request = task.payload_as()?;
        if request.text.is_empty() {
            return Err(Error::invalid_input("payload.text must not be empty"));
        }
        Output::json(&Reply {
            length: request.text.chars().count(),
            text: request.text,
        })
    }
}

export_plugin!({{type_name}});

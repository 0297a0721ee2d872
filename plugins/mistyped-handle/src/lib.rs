// A plugin whose `handle` export has another type than the iicp:plugin
// world's (a string where the world has a task record), with a valid
// `describe`: the host must refuse it when it loads it, before any task
// could be lowered into it with the wrong layout.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::iicp::plugin::handler::{Descriptor, Guest, TaskError, TaskOutput};
use iicp::plugin::types::Capability;
use iicp::plugin::types::ErrorKind;

struct Mistyped;

impl Guest for Mistyped {
    fn describe() -> Descriptor {
        Descriptor {
            name: "mistyped-handle".to_string(),
            version: "0.1.0".to_string(),
            capabilities: vec![Capability {
                intent: "urn:iicp:intent:test:mistyped:v1".to_string(),
                models: Vec::new(),
                max_tokens: None,
                input_modalities: Vec::new(),
            }],
        }
    }

    fn handle(task: String) -> Result<TaskOutput, TaskError> {
        Err(TaskError {
            kind: ErrorKind::InvalidInput,
            message: format!("{} bytes", task.len()),
            retryable: false,
        })
    }
}

export!(Mistyped);

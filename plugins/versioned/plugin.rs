// The reload-test plugin, shared by `versioned-v1` and `versioned-v2`: each
// crate defines `VERSION` and includes this file, so the two builds differ
// only in what they answer. Intent `urn:iicp:intent:test:versioned:v1`:
// sleeps `payload.ms` milliseconds, then answers `{"version": VERSION}`.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::iicp::plugin::handler::{Descriptor, Guest, Task, TaskError, TaskOutput};
use iicp::plugin::types::Capability;

const INTENT: &str = "urn:iicp:intent:test:versioned:v1";

struct Versioned;

impl Guest for Versioned {
    fn describe() -> Descriptor {
        Descriptor {
            name: "versioned".to_string(),
            version: format!("{VERSION}.0.0"),
            capabilities: vec![Capability {
                intent: INTENT.to_string(),
                models: Vec::new(),
                max_tokens: None,
                input_modalities: Vec::new(),
            }],
        }
    }

    fn handle(task: Task) -> Result<TaskOutput, TaskError> {
        #[derive(serde::Deserialize, Default)]
        struct Params {
            #[serde(default)]
            ms: u64,
        }
        let params: Params = serde_json::from_str(&task.payload).unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(params.ms));
        Ok(TaskOutput {
            result_json: format!("{{\"version\":\"{VERSION}\"}}"),
            usage: None,
            model_used: None,
        })
    }
}

export!(Versioned);

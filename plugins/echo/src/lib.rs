//! Echo plugin, written on the Rust SDK.
//!
//! * `urn:iicp:intent:llm:chat:v1`: answers in the OpenAI chat-completion
//!   shape with the last user message as the assistant's reply, and counts
//!   whitespace-separated words as tokens.
//! * `urn:iicp:intent:util:echo:v1`: returns the payload unchanged.
//! * config value `also_declare` (intents, comma-separated): declared too,
//!   and answered like the echo intent — one artifact can then serve a
//!   distinct intent per `[[plugin]]` table (the many-plugins benchmark).
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p echo` (in `plugins/`).

use iicp_plugin_sdk::chat::{self, ChatRequest};
use iicp_plugin_sdk::{
    Capability, Descriptor, Error, Output, Plugin, Task, Usage, config, export_plugin,
};

const ECHO_INTENT: &str = "urn:iicp:intent:util:echo:v1";
const MODEL: &str = "echo";

struct Echo;

/// The intents config value `also_declare` names.
fn also_declared() -> Vec<String> {
    config::get("also_declare")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|intent| !intent.is_empty())
        .map(str::to_string)
        .collect()
}

impl Plugin for Echo {
    fn describe() -> Descriptor {
        let capability = |intent: &str| {
            Capability::new(intent)
                .models([MODEL])
                .max_tokens(8192)
                .input_modalities(["text"])
        };
        also_declared().iter().fold(
            Descriptor::new("echo", env!("CARGO_PKG_VERSION"))
                .capability(capability(chat::INTENT))
                .capability(capability(ECHO_INTENT)),
            |descriptor, intent| descriptor.capability(capability(intent)),
        )
    }

    fn handle(task: Task) -> Result<Output, Error> {
        match task.intent.as_str() {
            chat::INTENT => {
                let request = ChatRequest::from_task(&task)?;
                let reply = request.last_user_text()?;
                let usage = Usage::new(request.prompt_words(), chat::words(&reply));
                chat::completion(MODEL, &reply, usage)
            }
            ECHO_INTENT => Ok(Output::raw(task.payload)),
            other if also_declared().iter().any(|i| i == other) => Ok(Output::raw(task.payload)),
            other => Err(Error::unsupported_intent(other)),
        }
    }
}

export_plugin!(Echo);

//! Serves `urn:iicp:intent:llm:chat:v1` through any OpenAI-compatible
//! `/v1/chat/completions` backend (Ollama, vLLM, llama.cpp, OpenAI, …).
//!
//! Configuration (`[plugin.config]`, `[plugin.secrets]`, `[plugin.http]`):
//!
//! ```toml
//! [[plugin]]
//! path = "openai_chat.wasm"
//! [plugin.config]
//! base_url = "http://127.0.0.1:11434"   # the backend; "/v1/chat/completions" is appended
//! model = "llama3.1:8b"                 # the model served and advertised
//! [plugin.secrets]
//! api_key = "OPENAI_API_KEY"            # optional: sent as Authorization: Bearer
//! [plugin.http]
//! allow = ["http://127.0.0.1:11434"]    # the backend must be allowed
//! ```
//!
//! The consumer's payload is forwarded as the request body, with `model`
//! set to the configured one, `stream` off and `max_tokens` from the task's
//! constraints when the payload has none. The backend's completion is the
//! result; its `usage` and `model` become the task's usage and `model_used`.

use iicp_plugin_sdk::http::{self, HttpError};
use iicp_plugin_sdk::{
    Capability, Descriptor, Error, Output, Plugin, Task, Usage, chat, config, export_plugin,
};
use serde::Deserialize;
use serde_json::{Map, Value};

struct OpenAiChat;

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Value>,
    #[serde(default)]
    usage: Option<CompletionUsage>,
}

#[derive(Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

fn endpoint(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// The backend request: the consumer's payload with our model, no streaming.
fn backend_body(task: &Task, model: &str) -> Result<Map<String, Value>, Error> {
    let mut body: Map<String, Value> = task.payload_as()?;
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(Error::invalid_input(
            "payload.messages must be a list of chat messages",
        ));
    }
    for asked in [
        task.model.as_deref(),
        body.get("model").and_then(Value::as_str),
    ]
    .into_iter()
    .flatten()
    {
        if asked != model {
            return Err(Error::invalid_input(format!(
                "model {asked} is not served here (this node serves {model})"
            )));
        }
    }
    body.insert("model".into(), Value::from(model));
    body.insert("stream".into(), Value::Bool(false));
    if let Some(max_tokens) = task.max_tokens {
        body.entry("max_tokens").or_insert(Value::from(max_tokens));
    }
    Ok(body)
}

fn transport_error(error: HttpError) -> Error {
    match error {
        HttpError::Timeout => Error::timeout("the model backend did not answer in time"),
        HttpError::Denied(why) => {
            Error::backend(format!("the model backend is not reachable: {why}")).retryable(false)
        }
        other => Error::backend(format!("the model backend failed: {other}")),
    }
}

fn status_error(status: u16, body: &[u8]) -> Error {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .map(|m| format!(": {}", m.chars().take(300).collect::<String>()))
        .unwrap_or_default();
    match status {
        400 | 422 => {
            Error::invalid_input(format!("the model backend rejected the request{detail}"))
        }
        401 | 403 => Error::backend("the model backend refused the credentials").retryable(false),
        404 => Error::backend(format!(
            "the model backend has no such endpoint or model{detail}"
        ))
        .retryable(false),
        429 => Error::unavailable("the model backend is rate limiting"),
        _ => Error::backend(format!(
            "the model backend failed with HTTP {status}{detail}"
        )),
    }
}

impl Plugin for OpenAiChat {
    fn describe() -> Descriptor {
        let models: Vec<String> = config::get("model").into_iter().collect();
        Descriptor::new("openai-chat", env!("CARGO_PKG_VERSION")).capability(
            Capability::new(chat::INTENT)
                .models(models)
                .input_modalities(["text", "image"]),
        )
    }

    fn handle(task: Task) -> Result<Output, Error> {
        if task.intent != chat::INTENT {
            return Err(Error::unsupported_intent(&task.intent));
        }
        let config = config::Values::read();
        let base_url = config.require("base_url")?;
        let model = config.require("model")?;
        let body = backend_body(&task, model)?;
        let authorization = config::secret("api_key").map(|key| format!("Bearer {key}"));
        let mut headers = vec![("traceparent", task.traceparent.as_str())];
        if let Some(state) = task.tracestate.as_deref() {
            headers.push(("tracestate", state));
        }
        if let Some(value) = authorization.as_deref() {
            headers.push(("authorization", value));
        }
        // No timeout of its own: the task's deadline, where the host ends
        // the call anyway, is the only bound (and asking for one would cost
        // a clock read and four more calls per task).
        let response =
            http::post_json(&endpoint(base_url), &headers, &body, None).map_err(transport_error)?;
        if response.status != 200 {
            return Err(status_error(response.status, &response.body));
        }
        let completion: Completion = serde_json::from_slice(&response.body).map_err(|_| {
            Error::backend("the model backend answered something that is not a chat completion")
        })?;
        if completion.choices.is_empty() {
            return Err(Error::backend(
                "the model backend answered a completion without choices",
            ));
        }
        let text = String::from_utf8(response.body)
            .map_err(|_| Error::backend("the model backend answered with invalid UTF-8"))?;
        let mut output =
            Output::raw(text).with_model(completion.model.unwrap_or_else(|| model.to_string()));
        if let Some(usage) = completion.usage {
            output = output.with_usage(Usage::new(usage.prompt_tokens, usage.completion_tokens));
        }
        Ok(output)
    }
}

export_plugin!(OpenAiChat);

//! Echo plugin.
//!
//! * `urn:iicp:intent:llm:chat:v1`: answers in the OpenAI chat-completion
//!   shape with the last user message as the assistant's reply, and counts
//!   whitespace-separated words as tokens.
//! * `urn:iicp:intent:util:echo:v1`: returns the payload unchanged.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p echo` (in `plugins/`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use exports::iicp::plugin::handler::{Descriptor, Guest, Task, TaskError, TaskOutput};
use iicp::plugin::types::{Capability, ErrorKind, Usage};

const CHAT_INTENT: &str = "urn:iicp:intent:llm:chat:v1";
const ECHO_INTENT: &str = "urn:iicp:intent:util:echo:v1";
const MODEL: &str = "echo";

struct Echo;

impl Guest for Echo {
    fn describe() -> Descriptor {
        let capability = |intent: &str| Capability {
            intent: intent.to_string(),
            models: vec![MODEL.to_string()],
            max_tokens: Some(8192),
            input_modalities: vec!["text".to_string()],
        };
        Descriptor {
            name: "echo".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: vec![capability(CHAT_INTENT), capability(ECHO_INTENT)],
        }
    }

    fn handle(task: Task) -> Result<TaskOutput, TaskError> {
        match task.intent.as_str() {
            CHAT_INTENT => chat(&task.payload),
            ECHO_INTENT => Ok(TaskOutput {
                result_json: task.payload,
                usage: None,
                model_used: None,
            }),
            other => Err(TaskError {
                kind: ErrorKind::UnsupportedIntent,
                message: format!("echo does not serve {other}"),
                retryable: false,
            }),
        }
    }
}

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(default, borrow)]
    messages: Vec<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
}

/// OpenAI content: a string, or a list of typed parts of which we keep text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

impl Content<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(text) => Cow::Borrowed(text),
            Content::Parts(parts) => {
                let texts: Vec<&str> = parts.iter().filter_map(|p| p.text.as_deref()).collect();
                Cow::Owned(texts.join("\n"))
            }
        }
    }
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    object: &'static str,
    model: &'static str,
    choices: [Choice<'a>; 1],
    usage: TokenUsage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct TokenUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

fn invalid(message: String) -> TaskError {
    TaskError {
        kind: ErrorKind::InvalidInput,
        message,
        retryable: false,
    }
}

fn word_count(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

fn chat(payload: &str) -> Result<TaskOutput, TaskError> {
    let request: ChatRequest = serde_json::from_str(payload)
        .map_err(|e| invalid(format!("payload is not a chat request: {e}")))?;
    let texts: Vec<(bool, Cow<str>)> = request
        .messages
        .iter()
        .map(|m| {
            (
                m.role == "user",
                m.content.as_ref().map(Content::text).unwrap_or_default(),
            )
        })
        .collect();
    let reply = texts
        .iter()
        .rev()
        .find(|(is_user, _)| *is_user)
        .map(|(_, text)| text.as_ref())
        .ok_or_else(|| invalid("payload.messages has no user message".to_string()))?;
    let prompt_tokens = texts
        .iter()
        .map(|(_, text)| word_count(text))
        .fold(0u32, u32::saturating_add);
    let completion_tokens = word_count(reply);
    let usage = TokenUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
    };
    let completion = ChatCompletion {
        object: "chat.completion",
        model: MODEL,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: reply,
            },
            finish_reason: "stop",
        }],
        usage,
    };
    let result = serde_json::to_string(&completion).map_err(|e| TaskError {
        kind: ErrorKind::Internal,
        message: format!("cannot serialise the reply: {e}"),
        retryable: false,
    })?;
    Ok(TaskOutput {
        result_json: result,
        usage: Some(Usage {
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
            total_tokens: completion.usage.total_tokens,
        }),
        model_used: Some(MODEL.to_string()),
    })
}

export!(Echo);

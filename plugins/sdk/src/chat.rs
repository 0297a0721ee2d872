//! The OpenAI chat shape that `urn:iicp:intent:llm:chat:v1` uses: reading
//! the messages of a request, and building a completion result.

use serde::{Deserialize, Serialize};

use crate::{Error, Output, Task, Usage};

/// The chat intent.
pub const INTENT: &str = "urn:iicp:intent:llm:chat:v1";

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, …
    pub role: String,
    /// Its content, if any.
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string, or a list of typed parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts, of which the text ones count here.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    /// The part's text, for text parts.
    #[serde(default)]
    pub text: Option<String>,
}

impl Message {
    /// The message's text (text parts joined by newlines).
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The messages of a chat request (other fields are left to the plugin).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    #[serde(default)]
    pub messages: Vec<Message>,
}

impl ChatRequest {
    /// Parses a task's payload.
    pub fn from_task(task: &Task) -> Result<Self, Error> {
        serde_json::from_str(&task.payload)
            .map_err(|e| Error::invalid_input(format!("payload is not a chat request: {e}")))
    }

    /// The text of the last user message.
    pub fn last_user_text(&self) -> Result<String, Error> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .ok_or_else(|| Error::invalid_input("payload.messages has no user message"))
    }

    /// Whitespace-separated words in every message, a rough token count.
    pub fn prompt_words(&self) -> u32 {
        self.messages
            .iter()
            .map(|m| words(&m.text()))
            .fold(0, u32::saturating_add)
    }
}

/// Whitespace-separated words in `text`.
pub fn words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).unwrap_or(u32::MAX)
}

#[derive(Serialize)]
struct Completion<'a> {
    object: &'static str,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Reply<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Reply<'a> {
    role: &'static str,
    content: &'a str,
}

/// A `chat.completion` result with one assistant reply, carrying `usage`
/// and `model_used` for the host too.
pub fn completion(model: &str, reply: &str, usage: Usage) -> Result<Output, Error> {
    let body = Completion {
        object: "chat.completion",
        model,
        choices: [Choice {
            index: 0,
            message: Reply {
                role: "assistant",
                content: reply,
            },
            finish_reason: "stop",
        }],
        usage,
    };
    Ok(Output::json(&body)?.with_usage(usage).with_model(model))
}

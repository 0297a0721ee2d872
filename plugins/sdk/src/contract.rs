//! The plugin contract in plain Rust types, converted to and from the
//! generated WIT bindings at the boundary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::iicp::plugin::types as wit;

/// One intent a plugin serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Intent URN.
    pub intent: String,
    /// Models served for it.
    pub models: Vec<String>,
    /// Largest `max_tokens` accepted, if limited.
    pub max_tokens: Option<u32>,
    /// Input modalities (`text`, `image`, `audio`, `video`); empty means text.
    pub input_modalities: Vec<String>,
}

impl Capability {
    /// A capability for `intent`, text input, no models.
    pub fn new(intent: impl Into<String>) -> Self {
        Self {
            intent: intent.into(),
            models: Vec::new(),
            max_tokens: None,
            input_modalities: Vec::new(),
        }
    }

    /// Sets the models served.
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the `max_tokens` limit.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the input modalities.
    pub fn input_modalities<S: Into<String>>(
        mut self,
        modalities: impl IntoIterator<Item = S>,
    ) -> Self {
        self.input_modalities = modalities.into_iter().map(Into::into).collect();
        self
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Machine-friendly name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The intents served.
    pub capabilities: Vec<Capability>,
}

impl Descriptor {
    /// A descriptor with no capabilities yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            capabilities: Vec::new(),
        }
    }

    /// Adds a capability.
    pub fn capability(mut self, capability: Capability) -> Self {
        self.capabilities.push(capability);
        self
    }
}

impl From<Descriptor> for wit::Descriptor {
    fn from(d: Descriptor) -> Self {
        wit::Descriptor {
            name: d.name,
            version: d.version,
            capabilities: d
                .capabilities
                .into_iter()
                .map(|c| wit::Capability {
                    intent: c.intent,
                    models: c.models,
                    max_tokens: c.max_tokens,
                    input_modalities: c.input_modalities,
                })
                .collect(),
        }
    }
}

/// Quality-of-service class requested by the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Latency-critical.
    Realtime,
    /// A person is waiting.
    Interactive,
    /// Throughput work.
    Batch,
    /// Anything goes.
    BestEffort,
}

/// One task.
#[derive(Debug, Clone)]
pub struct Task {
    /// The consumer's task id.
    pub id: String,
    /// The intent.
    pub intent: String,
    /// The payload as JSON text (`null` when none was sent).
    pub payload: String,
    /// The task's whole budget in milliseconds.
    pub timeout_ms: u32,
    /// `constraints.max_tokens`.
    pub max_tokens: Option<u32>,
    /// `constraints.model`.
    pub model: Option<String>,
    /// `constraints.qos`.
    pub qos: Qos,
    /// W3C `traceparent` to forward to backends.
    pub traceparent: String,
    /// W3C `tracestate` to forward to backends.
    pub tracestate: Option<String>,
    /// The deadline, in ms since the Unix epoch.
    pub deadline_unix_ms: u64,
}

impl Task {
    /// The payload parsed as `T`; a mismatch is an invalid-input error.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.payload)
            .map_err(|e| Error::invalid_input(format!("payload: {e}")))
    }

    /// Time left before the host stops the task.
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_millis(self.deadline_unix_ms).saturating_sub(now)
    }
}

impl From<wit::Task> for Task {
    fn from(t: wit::Task) -> Self {
        Task {
            id: t.task_id,
            intent: t.intent,
            payload: t.payload,
            timeout_ms: t.constraints.timeout_ms,
            max_tokens: t.constraints.max_tokens,
            model: t.constraints.model,
            qos: match t.constraints.qos {
                wit::Qos::Realtime => Qos::Realtime,
                wit::Qos::Interactive => Qos::Interactive,
                wit::Qos::Batch => Qos::Batch,
                wit::Qos::BestEffort => Qos::BestEffort,
            },
            traceparent: t.trace.traceparent,
            tracestate: t.trace.tracestate,
            deadline_unix_ms: t.deadline_unix_ms,
        }
    }
}

/// Token accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Both.
    pub total_tokens: u32,
}

impl Usage {
    /// Usage of `prompt` plus `completion` tokens.
    pub fn new(prompt: u32, completion: u32) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
        }
    }
}

/// A successful result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The result as JSON text.
    pub json: String,
    /// Token usage, if any.
    pub usage: Option<Usage>,
    /// The model that produced it, if any.
    pub model_used: Option<String>,
}

impl Output {
    /// A result serialised from `value`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        serde_json::to_string(value)
            .map(Self::raw)
            .map_err(|e| Error::internal(format!("cannot serialise the result: {e}")))
    }

    /// A result that already is JSON text (the host checks it).
    pub fn raw(json: impl Into<String>) -> Self {
        Self {
            json: json.into(),
            usage: None,
            model_used: None,
        }
    }

    /// Adds token usage.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Adds the model used.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model_used = Some(model.into());
        self
    }
}

impl From<Output> for wit::TaskOutput {
    fn from(o: Output) -> Self {
        wit::TaskOutput {
            result_json: o.json,
            usage: o.usage.map(|u| wit::Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            }),
            model_used: o.model_used,
        }
    }
}

/// Why a task failed; the host maps it to the protocol's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 422 `validation_error`.
    InvalidInput,
    /// 404 `unknown_intent`.
    UnsupportedIntent,
    /// 502 `backend_error`.
    BackendFailure,
    /// 503 `unavailable`.
    Unavailable,
    /// 504 `task_timeout`.
    Timeout,
    /// 500 `internal_error`.
    Internal,
}

/// A typed task failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Sent to the consumer; never put secrets here.
    pub message: String,
    /// Whether the consumer may retry.
    pub retryable: bool,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable,
        }
    }

    /// The payload is not acceptable.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message, false)
    }

    /// The intent is not served.
    pub fn unsupported_intent(intent: &str) -> Self {
        Self::new(
            ErrorKind::UnsupportedIntent,
            format!("intent {intent} is not served"),
            false,
        )
    }

    /// A backend failed (retryable by default).
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BackendFailure, message, true)
    }

    /// Temporarily unable to serve.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message, true)
    }

    /// A backend did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message, true)
    }

    /// A bug in the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message, false)
    }

    /// Overrides whether the consumer may retry.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

impl From<Error> for wit::TaskError {
    fn from(e: Error) -> Self {
        wit::TaskError {
            kind: match e.kind {
                ErrorKind::InvalidInput => wit::ErrorKind::InvalidInput,
                ErrorKind::UnsupportedIntent => wit::ErrorKind::UnsupportedIntent,
                ErrorKind::BackendFailure => wit::ErrorKind::BackendFailure,
                ErrorKind::Unavailable => wit::ErrorKind::Unavailable,
                ErrorKind::Timeout => wit::ErrorKind::Timeout,
                ErrorKind::Internal => wit::ErrorKind::Internal,
            },
            message: e.message,
            retryable: e.retryable,
        }
    }
}

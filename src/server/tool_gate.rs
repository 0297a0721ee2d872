//! The CIP tool gate (`protocol.md` §1.3 step 2, §6): an intent whose
//! domain — the fourth `:`-separated segment, `urn:iicp:intent:tool:…` — is
//! `tool` is refused with 403 `tool_execution_denied` unless the operator's
//! policy says `allow_tool_execution = true`. The reference node checks it
//! before drain and capacity, so a denied task costs no slot; so do we.

use crate::protocol::ApiError;
use crate::server::plugin_table::PluginTable;

/// Whether tool-domain intents may run on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolGate {
    allow_tool_execution: bool,
}

/// Whether `intent` is in the tool domain (segment index 3 is `tool`).
pub fn is_tool_intent(intent: &str) -> bool {
    intent.split(':').nth(3) == Some("tool")
}

impl ToolGate {
    /// A gate following `allow_tool_execution`.
    pub fn new(allow_tool_execution: bool) -> Self {
        Self {
            allow_tool_execution,
        }
    }

    /// Refuses a tool-domain intent unless tool execution is allowed.
    pub fn check(self, intent: &str) -> Result<(), ApiError> {
        if self.allow_tool_execution || !is_tool_intent(intent) {
            Ok(())
        } else {
            Err(ApiError::tool_execution_denied())
        }
    }

    /// Warns about served intents every task of which this gate refuses: an
    /// operator who loaded a tool plugin most likely forgot the policy.
    pub fn warn_unreachable(self, table: &PluginTable) {
        if self.allow_tool_execution {
            return;
        }
        for intent in table.intents().into_iter().filter(|i| is_tool_intent(i)) {
            tracing::warn!(
                intent,
                "tool-domain intent served but policy.allow_tool_execution is false; its tasks get 403"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_domain_segment_counts() {
        assert!(is_tool_intent("urn:iicp:intent:tool:run:v1"));
        assert!(!is_tool_intent("urn:iicp:intent:llm:tool:v1"));
        assert!(!is_tool_intent("urn:iicp:intent:tools:run:v1"));
        assert!(!is_tool_intent("tool"));
    }

    #[test]
    fn denied_unless_allowed() {
        let denied = ToolGate::new(false).check("urn:iicp:intent:tool:run:v1");
        let error = denied.unwrap_err();
        assert_eq!(
            (error.status().as_u16(), error.code()),
            (403, "tool_execution_denied")
        );
        assert!(
            ToolGate::new(true)
                .check("urn:iicp:intent:tool:run:v1")
                .is_ok()
        );
        assert!(
            ToolGate::new(false)
                .check("urn:iicp:intent:llm:chat:v1")
                .is_ok()
        );
    }
}

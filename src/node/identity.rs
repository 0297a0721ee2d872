//! Phase 1 of starting a node: who it is. The state directory, the node id
//! (fixed by the operator, stored, or new) and the IICP-CX key.

use super::StartError;
use crate::config::NodeConfig;
use crate::directory::identity::{StateDir, default_state_dir};
use crate::protocol::confidentiality::CxKey;

/// The node's identity and where it persists.
pub struct Identity {
    /// The state directory, unless none could be chosen.
    pub state_dir: Option<StateDir>,
    /// The node id.
    pub node_id: String,
    /// The IICP-CX key, unless confidentiality is off (moved into the
    /// shared state when serving starts).
    pub cx_key: Option<CxKey>,
}

impl Identity {
    /// Opens the state directory and loads (or creates) the id and key.
    pub fn establish(config: &NodeConfig) -> Result<Self, StartError> {
        let state_dir = match config.node.state_dir.clone().or_else(default_state_dir) {
            Some(dir) => Some(StateDir::open(&dir).map_err(|e| StartError::State(dir, e))?),
            None => None,
        };
        let node_id = match &state_dir {
            Some(state) => state
                .node_id(config.node.node_id.as_deref())
                .map_err(|e| StartError::Config(format!("cannot store the node id: {e}")))?,
            None => config
                .node
                .node_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        let cx_key =
            match (config.node.confidentiality, &state_dir) {
                (false, _) => None,
                (true, Some(state)) => Some(state.cx_key().map_err(|e| {
                    StartError::Config(format!("cannot load the IICP-CX key: {e}"))
                })?),
                (true, None) => {
                    tracing::warn!("no state directory: the IICP-CX key changes at every start");
                    Some(CxKey::generate())
                }
            };
        Ok(Self {
            state_dir,
            node_id,
            cx_key,
        })
    }
}

//! The node's relationship with an IICP directory (`protocol.md` §2, §5,
//! §10–12): registration with capabilities built from the loaded plugins,
//! heartbeats with liveness challenges and metrics batches, token rotation,
//! signed pricing declarations, credit receipts, deregistration.
//!
//! * [`client`] — bounded HTTP calls and the directory's error shapes;
//! * [`directory_key`] — the key that signs consumer tokens, kept fresh;
//! * [`answers`] — reading the REGISTER answer and the PONG;
//! * [`settings`] — what the operator configures;
//! * [`identity`] — node id and credentials, persisted;
//! * [`payload`] — REGISTER and HEARTBEAT bodies, metrics batches;
//! * [`signing`] — HMAC responses and signatures;
//! * [`lifecycle`] — the register/heartbeat loop;
//! * [`receipts`] — credit receipts off the task path;
//! * [`backoff`] — the jittered backoff both retry with;
//! * [`status`] — the standing shown by `/iicp/health`.

pub mod answers;
pub mod backoff;
pub mod client;
pub mod directory_key;
pub mod identity;
pub mod lifecycle;
pub mod metrics;
pub mod payload;
pub mod receipts;
pub mod settings;
pub mod signing;
pub mod status;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::lifecycle::Lifecycle;

/// A running lifecycle.
pub struct DirectoryLink {
    lifecycle: Arc<Lifecycle>,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl DirectoryLink {
    /// Starts registering and heartbeating in the background.
    pub fn start(lifecycle: Lifecycle) -> Self {
        let lifecycle = Arc::new(lifecycle);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(lifecycle.clone().run(stopped));
        Self {
            lifecycle,
            task,
            stop,
        }
    }

    /// Stops registering and heartbeating (at the start of shutdown, so the
    /// directory stops vouching for a node that is draining).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        while !self.task.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Makes the node register again soon, e.g. after a reload changed the
    /// intents it serves.
    pub fn capabilities_changed(&self) {
        self.lifecycle.request_registration();
    }

    /// Deregisters (bounded); call after the drain.
    pub async fn deregister(&self) {
        self.lifecycle.deregister().await;
    }
}

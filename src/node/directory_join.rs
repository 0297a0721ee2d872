//! The node's side of joining a directory, in two steps around building the
//! shared state: [`DirectoryJoin::prepare`] makes the client, credentials
//! (stored ones prove ownership at the first registration), the receipt
//! queue and the status the routes show; [`DirectoryJoin::start`] begins
//! registering once the server can answer the directory's health probe.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use super::StartError;
use super::identity::Identity;
use crate::config::NodeConfig;
use crate::directory::DirectoryLink;
use crate::directory::client::DirectoryClient;
use crate::directory::directory_key::{self, DirectoryKey};
use crate::directory::identity::{Credentials, SharedCredentials};
use crate::directory::lifecycle::{Lifecycle, LifecycleParts, NodeView};
use crate::directory::receipts::{self, ReceiptQueue};
use crate::directory::settings::DirectorySettings;
use crate::directory::status::DirectoryStatus;
use crate::metrics::Metrics;
use crate::server::task_auth::AuthMode;

/// Everything prepared for a directory, before the node serves.
pub struct DirectoryJoin {
    settings: DirectorySettings,
    /// The directory client (also used for relay bind tickets).
    pub client: DirectoryClient,
    /// The node's credentials, also read by the task route's auth.
    pub credentials: SharedCredentials,
    /// The key that signs consumer tokens, fetched when the auth mode
    /// checks them.
    pub directory_key: Option<Arc<DirectoryKey>>,
    /// Credit receipts, fed by the task route.
    pub receipts: ReceiptQueue,
    /// The standing, shown by `/iicp/health`.
    pub status: Arc<DirectoryStatus>,
}

impl DirectoryJoin {
    /// Prepares the configured directory, if any.
    pub fn prepare(
        config: &NodeConfig,
        identity: &Identity,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<Self>, StartError> {
        let Some(settings) = config.directory.clone() else {
            tracing::info!("no directory configured; serving standalone");
            return Ok(None);
        };
        let client =
            DirectoryClient::new(&settings.url, settings.timeout).map_err(StartError::Config)?;
        let (node_token, directory_hmac_key) = identity
            .state_dir
            .as_ref()
            .and_then(|state| state.credentials(&settings.url, &identity.node_id))
            .map_or((None, None), |(token, key)| (Some(token), key));
        let credentials: SharedCredentials = Arc::new(RwLock::new(Credentials {
            node_id: identity.node_id.clone(),
            node_token,
            directory_hmac_key,
            operator_hmac_key: settings.operator_hmac_key.clone(),
        }));
        let receipts = receipts::start(
            client.clone(),
            credentials.clone(),
            metrics.part(),
            settings.receipt_queue,
            settings.timing,
        );
        let status = Arc::new(DirectoryStatus::new(&settings.url));
        let directory_key = (config.auth.mode == AuthMode::ConsumerToken)
            .then(|| directory_key::start(client.clone(), config.auth.key_refresh, metrics.part()));
        Ok(Some(Self {
            settings,
            client,
            credentials,
            directory_key,
            receipts,
            status,
        }))
    }

    /// Starts registering and heartbeating for `node`, served at `local_addr`.
    pub fn start(
        self,
        config: &NodeConfig,
        identity: &Identity,
        local_addr: SocketAddr,
        metrics: &Arc<Metrics>,
        node: Arc<dyn NodeView>,
    ) -> DirectoryLink {
        let endpoint = self
            .settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"));
        DirectoryLink::start(Lifecycle::new(LifecycleParts {
            client: self.client,
            settings: self.settings,
            endpoint,
            region: config.node.region.clone(),
            local_health_url: format!("http://{local_addr}/iicp/health"),
            credentials: self.credentials,
            state_dir: identity.state_dir.clone(),
            status: self.status,
            metrics: metrics.part(),
            node,
        }))
    }
}

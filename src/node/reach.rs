//! The reach phase: how the node reaches the mesh besides its own
//! listener — the relay worker role (serve from behind NAT), the relay role
//! (serve as a relay), peer gossip — prepared before the directory is told
//! about the node, started with the shared state, stopped beside the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::watch;

use super::StartError;
use super::directory_join::DirectoryJoin;
use super::identity::Identity;
use crate::config::NodeConfig;
use crate::directory::client::DirectoryClient;
use crate::directory::identity::random_secret;
use crate::metrics::Metrics;
use crate::peers::exchange::{Peers, PeersParts};
use crate::peers::metrics::PeerMetrics;
use crate::peers::settings::PeerSettings;
use crate::relay::accept::FramedAccept;
use crate::relay::metrics::RelayMetrics;
use crate::relay::routes::RelayRoutes;
use crate::relay::sessions::{Relay, reap_silent_sessions};
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::relay::worker::{self, TicketSource, WorkerHandle, WorkerParts};
use crate::server::state::AppState;
use crate::server::unsent_answers::UnsentAnswers;

/// Where the worker keeps the key that lets a restarted node take its
/// relay session over.
const REBIND_KEY_FILE: &str = "relay_rebind_key";
/// Where the node keeps the seed of its Ed25519 gossip key.
const GOSSIP_KEY_FILE: &str = "gossip_key";

/// `transport_method` of a node reached through a relay (§2.2).
const RELAYED_TRANSPORT: &str = "turn_relay";
/// `nat_type` a relayed worker declares unless the operator set one: it
/// takes no inbound connection at all. A concrete type with a transport
/// method lets the directory skip its liveness probe (`protocol.md` §2.3),
/// which a worker needing a directory-issued bind ticket could not pass
/// before it is bound.
const RELAYED_NAT_TYPE: &str = "symmetric";

/// Prepared, not yet running.
pub struct Reach {
    relay: Option<Arc<Relay>>,
    worker: Option<(WorkerSettings, String)>,
    peers: Option<Arc<Peers>>,
}

/// Running.
pub struct Reaching {
    relay: Option<Arc<Relay>>,
    unsent_answers: UnsentAnswers,
    reaper: Option<tokio::task::JoinHandle<()>>,
    framed_accept: Option<tokio::task::JoinHandle<()>>,
    worker: Option<WorkerHandle>,
    peers: Option<Arc<Peers>>,
    gossip: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

impl Reach {
    /// Checks the relay settings and tells the directory settings how the
    /// node is reached: a worker advertises its relay-for endpoint with
    /// relayed transport fields, a relay says it is relay-capable.
    pub fn prepare(
        config: &mut NodeConfig,
        identity: &Identity,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let relay = config
            .reach
            .relay_capable
            .clone()
            .map(|settings: RelaySettings| {
                let pins_file = identity
                    .state_dir
                    .as_ref()
                    .map(|state| state.path(crate::relay::pins::PINS_FILE));
                Relay::new(
                    settings,
                    &identity.node_id,
                    pins_file,
                    metrics.part::<RelayMetrics>(),
                )
                .map(Arc::new)
                .map_err(|e| StartError::Config(format!("relay_capable: {e}")))
            })
            .transpose()?;
        let worker = match config.reach.relay.clone() {
            Some(settings) => {
                let rebind_key = match &identity.state_dir {
                    Some(state) => state.secret(REBIND_KEY_FILE).map_err(|e| {
                        StartError::Config(format!("cannot store the relay rebind key: {e}"))
                    })?,
                    None => random_secret(),
                };
                Some((settings, rebind_key))
            }
            None => None,
        };
        let peers = match &config.reach.peers {
            Some(settings) => Some(Arc::new(peers(settings, config, identity, metrics)?)),
            None => None,
        };
        if let Some(directory) = &mut config.directory {
            directory.reach.relay_capable = relay.is_some();
            directory.reach.gossip_public_key = peers.as_ref().map(|p| p.public_key_hex());
            if let Some((settings, _)) = &worker {
                directory.endpoint = Some(settings.relay_for_endpoint(&identity.node_id));
                directory.reach.relayed_by = Some(settings.base_url());
                let transport = &mut directory.transport;
                transport
                    .method
                    .get_or_insert_with(|| RELAYED_TRANSPORT.to_string());
                transport
                    .nat_type
                    .get_or_insert_with(|| RELAYED_NAT_TYPE.to_string());
            }
        }
        Ok(Self {
            relay,
            worker,
            peers,
        })
    }

    /// Starts the roles: the relay's reaper and framed accept port (its
    /// workers are told `http_port`, the public listener's), the worker's
    /// pulls.
    pub fn start(
        self,
        config: &NodeConfig,
        identity: &Identity,
        state: &Arc<AppState>,
        directory: Option<&DirectoryJoin>,
        http_port: u16,
    ) -> Result<Reaching, StartError> {
        let reaper = self.relay.as_ref().map(|relay| {
            let period = (relay.settings.liveness() / 4).min(Duration::from_secs(1));
            tracing::info!(
                max_sessions = relay.settings.max_sessions,
                bind_tickets = relay.settings.require_bind_ticket,
                "relaying for workers behind NAT"
            );
            tokio::spawn(reap_silent_sessions(relay.clone(), period))
        });
        let framed_accept = match &self.relay {
            Some(relay) if relay.settings.accept_port != 0 => {
                let listen = config.node.listen_addr().map_err(StartError::Config)?;
                let addr = SocketAddr::new(listen.ip(), relay.settings.accept_port);
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|e| StartError::Bind(addr, e))?;
                tracing::info!(%addr, "framed relay accept listening");
                let accept = FramedAccept::new(
                    relay.clone(),
                    state.unsent_answers.clone(),
                    http_port,
                    config.node.edge().body_read_timeout,
                );
                Some(tokio::spawn(accept.serve(listener)))
            }
            _ => None,
        };
        let worker = match self.worker {
            Some((settings, rebind_key)) => Some(
                worker::start(WorkerParts {
                    settings,
                    state: state.clone(),
                    worker_id: identity.node_id.clone(),
                    rebind_key,
                    tickets: directory.map(|join| TicketSource {
                        client: join.client.clone(),
                        credentials: join.credentials.clone(),
                    }),
                    drain: config.node.drain_timeout(),
                })
                .map_err(StartError::Config)?,
            ),
            None => None,
        };
        let gossip = self.peers.as_ref().map(|peers| {
            let (stop, stopped) = watch::channel(false);
            (stop, tokio::spawn(peers.clone().gossip(stopped)))
        });
        Ok(Reaching {
            relay: self.relay,
            unsent_answers: state.unsent_answers.clone(),
            reaper,
            framed_accept,
            worker,
            peers: self.peers,
            gossip,
        })
    }
}

/// Peer gossip for this node: its Ed25519 key from the state directory,
/// the mesh's HMAC key from the environment, the directory for keys.
fn peers(
    settings: &PeerSettings,
    config: &NodeConfig,
    identity: &Identity,
    metrics: &Arc<Metrics>,
) -> Result<Peers, StartError> {
    let seed = match &identity.state_dir {
        Some(state) => state
            .secret(GOSSIP_KEY_FILE)
            .map_err(|e| StartError::Config(format!("cannot store the gossip key: {e}")))?,
        None => random_secret(),
    };
    let signing_seed: [u8; 32] = hex::decode(seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StartError::Config("the stored gossip key is damaged".into()))?;
    let hmac_key = match &settings.hmac_key_env {
        Some(variable) => Some(std::env::var(variable).map_err(|_| {
            StartError::Config(format!("peers.hmac_key_env: {variable} is not set"))
        })?),
        None => None,
    };
    let directory = config
        .directory
        .as_ref()
        .map(|d| DirectoryClient::new(&d.url, d.timeout))
        .transpose()
        .map_err(StartError::Config)?;
    Peers::new(PeersParts {
        node_id: identity.node_id.clone(),
        endpoint: config.directory.as_ref().and_then(|d| d.endpoint.clone()),
        region: config.node.region.clone(),
        settings: settings.clone(),
        signing_seed,
        hmac_key,
        directory,
        metrics: PeerMetrics::clone(&metrics.part()),
        allow_private: settings.allow_private_endpoints,
        body_read_timeout: config.node.edge().body_read_timeout,
    })
    .map_err(StartError::Config)
}

impl Reaching {
    /// Routes the roles add to the node's router, with the node's body
    /// bounds.
    pub fn routes(&self, config: &NodeConfig) -> Router<Arc<AppState>> {
        let mut routes = Router::new();
        if let Some(relay) = &self.relay {
            routes = routes.merge(
                RelayRoutes::new(
                    relay.clone(),
                    config.node.max_body_bytes,
                    config.node.edge().body_read_timeout,
                    self.unsent_answers.clone(),
                )
                .router(),
            );
        }
        if let Some(peers) = &self.peers {
            routes = routes.merge(peers.clone().router());
        }
        routes
    }

    /// At shutdown: the relay ends its sessions (their consumers are
    /// answered, their long polls return); the worker stops pulling,
    /// finishes what it holds within the drain bound and unbinds.
    pub async fn stop(self) {
        if let Some(relay) = &self.relay {
            relay.stop();
        }
        if let Some(reaper) = self.reaper {
            reaper.abort();
        }
        if let Some(accept) = self.framed_accept {
            accept.abort();
        }
        if let Some((stop, gossip)) = self.gossip {
            let _ = stop.send(true);
            let _ = gossip.await;
        }
        if let Some(worker) = self.worker {
            worker.stop().await;
        }
    }
}

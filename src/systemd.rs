//! Talking to systemd (`sd_notify`): `READY=1` once plugins are loaded and
//! the listener is bound, `STATUS=` with the load, `WATCHDOG=1` while the
//! event loop runs (when the unit sets `WatchdogSec=`), `STOPPING=1` when
//! the drain starts. The protocol is one datagram per message to the unix
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); without that variable every call does nothing.
//!
//! The watchdog is pinged from a task on the node's own runtime, so a
//! wedged event loop stops the pings and systemd restarts the node.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::server::state::AppState;

/// How often the status line is refreshed without a watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Where notifications go; `None` when not started by systemd.
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    watchdog: Option<Duration>,
}

enum Target {
    Path(PathBuf),
    #[cfg(target_os = "linux")]
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if any. The watchdog interval
    /// comes from `WATCHDOG_USEC` (ignored when `WATCHDOG_PID` names
    /// another process).
    pub fn from_env() -> Option<Self> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_str()?;
        let target = match name.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(abstract_name) => Target::Abstract(abstract_name.as_bytes().to_vec()),
            #[cfg(not(target_os = "linux"))]
            Some(_) => return None,
            None => Target::Path(PathBuf::from(name)),
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        let socket = UnixDatagram::unbound()
            .inspect_err(|error| tracing::warn!(%error, "cannot notify systemd"))
            .ok()?;
        Some(Self {
            socket,
            target,
            watchdog,
        })
    }

    /// Sends one notification (`KEY=VALUE` lines); failures are logged.
    pub fn notify(&self, message: &str) {
        let sent = match &self.target {
            Target::Path(path) => self.socket.send_to(message.as_bytes(), path),
            #[cfg(target_os = "linux")]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| self.socket.send_to_addr(message.as_bytes(), &addr))
            }
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "cannot notify systemd");
        }
    }

    /// Ping period: half the watchdog timeout, as sd_watchdog_enabled(3)
    /// advises; without a watchdog, how often the status is refreshed.
    fn period(&self) -> Duration {
        self.watchdog.map_or(STATUS_INTERVAL, |timeout| timeout / 2)
    }
}

/// The status line: what is served and how busy it is.
fn status(state: &AppState) -> String {
    let plugins = state.plugins.load();
    format!(
        "serving {} plugin(s), {} intent(s); {} of {} slots busy",
        plugins.entries().len(),
        plugins.intents().len(),
        state.gate.active(),
        state.gate.capacity()
    )
}

/// The node's link to systemd for as long as it serves.
pub struct ServiceManager {
    notifier: Option<Arc<Notifier>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl ServiceManager {
    /// Tells systemd the node is ready (when started by systemd) and keeps
    /// the status and the watchdog fresh.
    pub fn ready(state: Arc<AppState>) -> Self {
        let notifier = Notifier::from_env().map(Arc::new);
        let refresher = notifier.clone().map(|notifier| {
            notifier.notify(&format!("READY=1\nSTATUS={}", status(&state)));
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(notifier.period());
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let mut message = format!("STATUS={}", status(&state));
                    if notifier.watchdog.is_some() {
                        message.push_str("\nWATCHDOG=1");
                    }
                    notifier.notify(&message);
                }
            })
        });
        Self {
            notifier,
            refresher,
        }
    }

    /// Tells systemd the node is draining; the watchdog stops with it
    /// (`TimeoutStopSec=` bounds the drain from there).
    pub fn stopping(self, state: &AppState) {
        if let Some(refresher) = self.refresher {
            refresher.abort();
        }
        if let Some(notifier) = self.notifier {
            notifier.notify(&format!(
                "STOPPING=1\nSTATUS=draining {} in-flight task(s)",
                state.gate.active()
            ));
        }
    }
}

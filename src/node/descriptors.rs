//! Before binding: make sure the process may open as many sockets as the
//! connection caps allow. Each connection is one file descriptor; a cap
//! above the descriptor limit would turn a connection flood into failing
//! `accept` calls (and failing plugin sockets and file opens) instead of
//! clean 503 refusals.
//!
//! The soft `RLIMIT_NOFILE` is raised as far as needed, up to the hard
//! limit (as Go's runtime and most servers do at start). If even the hard
//! limit is too low, the caps are lowered to fit and a warning says so: the
//! node still serves, with a cap it can keep.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::config::NodeConfig;
use crate::runtime::host::http::DEFAULT_IDLE_CONNECTIONS_PER_HOST;

/// Descriptors kept for everything but client connections: listeners,
/// plugin files and outbound sockets, the directory client, the artifact
/// cache, logs.
pub const RESERVED_DESCRIPTORS: u64 = 1024;

/// Raises the descriptor limit for the configured caps, or lowers the
/// public cap to what the hard limit allows.
pub fn fit_connection_caps(config: &mut NodeConfig) {
    let admin = config.admin.as_ref().map_or(0, |a| a.max_connections) as u64;
    // Plugins' idle backend connections are kept open between tasks.
    let idle_outbound: u64 = config
        .plugins
        .iter()
        .map(|p| {
            u64::from(
                p.source
                    .http
                    .max_idle_connections
                    .unwrap_or(DEFAULT_IDLE_CONNECTIONS_PER_HOST),
            )
        })
        .sum();
    let wanted =
        config.node.edge().max_connections as u64 + admin + idle_outbound + RESERVED_DESCRIPTORS;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let raised = wanted.min(hard);
    let granted = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => raised,
        Err(_) => current,
    };
    if granted >= wanted {
        tracing::debug!(
            limit = granted,
            "raised the open-file limit for the connection caps"
        );
        return;
    }
    let fits = granted
        .saturating_sub(admin + idle_outbound + RESERVED_DESCRIPTORS)
        .max(1);
    tracing::warn!(
        max_connections = config.node.edge().max_connections,
        lowered_to = fits,
        open_file_limit = granted,
        "the open-file limit is too low for max_connections; raise the hard limit (ulimit -Hn, LimitNOFILE=) to keep the configured cap"
    );
    config.node.max_connections = Some(usize::try_from(fits).unwrap_or(usize::MAX));
}

//! The capability sections above the file: every key of each one may be set
//! in the environment (`IICP_HOST_<SECTION>__<KEY>`) and by `--set
//! SECTION.KEY=VALUE` ([`Overrides`]). A capability joins with its name in
//! [`SECTIONS`] and one line in [`stack`]; a setting inside it needs none.

use super::NodeConfig;
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::settings::{Overrides, Section};
use crate::telemetry::otlp::ExportSettings;

/// The sections the environment and `--set` may name.
pub const SECTIONS: &[&str] = &[
    WorkerSettings::NAME,
    RelaySettings::NAME,
    PeerSettings::NAME,
    ExportSettings::NAME,
];

/// Stacks `overrides` over what the file (or the defaults) gave `config`,
/// checking each section they touch once.
pub fn stack(config: &mut NodeConfig, overrides: &Overrides) -> Result<(), String> {
    overrides.check_sections(SECTIONS)?;
    let reach = &mut config.reach;
    reach.relay = overrides.layer(reach.relay.take())?;
    reach.relay_capable = overrides.layer(reach.relay_capable.take())?;
    reach.peers = overrides.layer(reach.peers.take())?;
    if let Some(telemetry) = overrides.layer(Some(config.telemetry))? {
        config.telemetry = telemetry;
    }
    Ok(())
}

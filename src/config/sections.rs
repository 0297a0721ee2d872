//! The capability sections above the file: every key of each one may be set
//! in the environment (`IICP_HOST_<SECTION>__<KEY>`) and by `--set
//! SECTION.KEY=VALUE` ([`Overrides`]). A capability joins with its name in
//! [`SECTIONS`] and one line in [`stack`]; a setting inside it needs none.
//! The sections in [`FILE_SECTIONS`] are stacked over the file's tables
//! before the file is built (`file::load_cached`), as their keys name files
//! and variables the build resolves; they need `--config`.

use super::NodeConfig;
use crate::directory::settings::DirectorySection;
use crate::oci::settings::OciSection;
use crate::peers::settings::PeerSettings;
use crate::relay::settings::{RelaySettings, WorkerSettings};
use crate::runtime::limit_settings::LimitKeys;
use crate::server::node_settings::NodeSection;
use crate::server::settings::{AdminSection, AuthSection};
use crate::settings::{Overrides, Section};
use crate::telemetry::otlp::ExportSettings;

/// The sections the environment and `--set` may name, with or without a
/// file (`[node]` and `[defaults]` are stacked before the build, over the
/// file's tables or the defaults of `--plugin`).
pub const SECTIONS: &[&str] = &[
    NodeSection::NAME,
    LimitKeys::NAME,
    WorkerSettings::NAME,
    RelaySettings::NAME,
    PeerSettings::NAME,
    ExportSettings::NAME,
];

/// The sections stacked over the file's tables, before its build.
pub const FILE_SECTIONS: &[&str] = &[
    OciSection::NAME,
    AuthSection::NAME,
    DirectorySection::NAME,
    AdminSection::NAME,
];

/// Checks that every override names a known section: without a file
/// (`with_file` false), only those of [`SECTIONS`].
pub fn check_names(overrides: &Overrides, with_file: bool) -> Result<(), String> {
    if with_file {
        return overrides.check_sections(&[SECTIONS, FILE_SECTIONS].concat());
    }
    overrides.check_sections(SECTIONS).map_err(|error| {
        format!(
            "{error}; [{}] are read with --config only",
            FILE_SECTIONS.join("], [")
        )
    })
}

/// Stacks `overrides` over what the file (or the defaults) gave `config`,
/// checking each section they touch once.
pub fn stack(config: &mut NodeConfig, overrides: &Overrides) -> Result<(), String> {
    let reach = &mut config.reach;
    reach.relay = overrides.layer(reach.relay.take())?;
    reach.relay_capable = overrides.layer(reach.relay_capable.take())?;
    reach.peers = overrides.layer(reach.peers.take())?;
    if let Some(telemetry) = overrides.layer(Some(config.telemetry))? {
        config.telemetry = telemetry;
    }
    Ok(())
}

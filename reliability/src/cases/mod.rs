//! The case families. Each module runs its cases against nodes it starts
//! and returns one [`CaseReport`] per case; [`run`] dispatches by name.

pub mod hostile_plugins;

use crate::report::CaseReport;
use crate::{Context, Scale};

/// Every family, in the order of `docs/reliability.md`.
pub const FAMILIES: &[&str] = &[hostile_plugins::FAMILY];

/// Runs the family called `name`.
pub async fn run(name: &str, ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    match name {
        hostile_plugins::FAMILY => hostile_plugins::run(ctx, scale).await,
        other => panic!("no case family called {other:?}; families: {FAMILIES:?}"),
    }
}

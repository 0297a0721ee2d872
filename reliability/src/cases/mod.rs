//! The case families. Each module runs its cases against nodes it starts
//! and returns one [`CaseReport`] per case; [`run`] dispatches by name.

pub mod directory_chaos;
pub mod hostile_plugins;
pub mod memory_limit;
pub mod overload;
pub mod shutdown;
pub mod slow_clients;
pub mod trust_boundaries;

use crate::report::CaseReport;
use crate::{Context, Scale};

/// Every family, in the order of `docs/reliability.md`.
pub const FAMILIES: &[&str] = &[
    hostile_plugins::FAMILY,
    slow_clients::FAMILY,
    overload::FAMILY,
    directory_chaos::FAMILY,
    shutdown::FAMILY,
    memory_limit::FAMILY,
    trust_boundaries::FAMILY,
];

/// Runs the family called `name`.
pub async fn run(name: &str, ctx: &Context, scale: Scale) -> Vec<CaseReport> {
    match name {
        hostile_plugins::FAMILY => hostile_plugins::run(ctx, scale).await,
        slow_clients::FAMILY => slow_clients::run(ctx, scale).await,
        overload::FAMILY => overload::run(ctx, scale).await,
        directory_chaos::FAMILY => directory_chaos::run(ctx, scale).await,
        shutdown::FAMILY => shutdown::run(ctx, scale).await,
        memory_limit::FAMILY => memory_limit::run(ctx, scale).await,
        trust_boundaries::FAMILY => trust_boundaries::run(ctx, scale).await,
        other => panic!("no case family called {other:?}; families: {FAMILIES:?}"),
    }
}

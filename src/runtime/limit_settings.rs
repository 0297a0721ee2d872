//! What an operator may say about a plugin's task limits: the `[defaults]`
//! table every plugin inherits, the same keys in each `[[plugin]]` table,
//! and the flags that set them for every plugin (`--memory-mb`, …). The
//! keys, their ranges and how they are put over [`PluginLimits`] live here,
//! next to the limits they set; a key left out inherits.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limits::PluginLimits;
pub use crate::protocol::task::TIMEOUT_MS_RANGE;
use crate::settings::{Section, check_range};

/// Per-task memory bounds in MiB (wasm32 addresses 4 GiB).
pub const MEMORY_MB_RANGE: RangeInclusive<u32> = 1..=4096;
/// Resource-table entries per task: enough for the wasi basics, at most a
/// million (wasmtime's own default).
pub const MAX_RESOURCES_RANGE: RangeInclusive<u32> = 64..=1_000_000;
/// Host memory per task in KiB (64 KiB .. 4 GiB).
pub const HOST_MEMORY_KIB_RANGE: RangeInclusive<u32> = 64..=4 << 20;
/// Largest task result in KiB (1 KiB .. 64 MiB; the default is 4 MiB). The
/// node's worst case counts it three times per task (`memory_bound`), so a
/// plugin whose results are small (an LLM completion) may lower it to run
/// many more tasks at once in the same memory.
pub const MAX_OUTPUT_KIB_RANGE: RangeInclusive<u32> = 1..=64 << 10;
/// Tasks one instance may serve.
pub const INSTANCE_REUSE_RANGE: RangeInclusive<u32> = 1..=1_000_000;
/// How long a reused instance may idle, in ms.
pub const INSTANCE_IDLE_MS_RANGE: RangeInclusive<u64> = 100..=3_600_000;

/// The limit keys of `[defaults]` and of a `[[plugin]]` table: each one
/// given replaces the inherited value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitKeys {
    /// Linear memory per task, in MiB.
    pub memory_mb: Option<u32>,
    /// Task budget when the consumer sets none, in ms.
    pub timeout_ms: Option<u64>,
    /// The longest budget a task gets, in ms.
    pub max_timeout_ms: Option<u64>,
    /// Tasks one instance serves (1: a fresh instance per task).
    pub instance_reuse: Option<u32>,
    /// How long a reused instance may idle, in ms.
    pub instance_idle_ms: Option<u64>,
    /// Resource-table entries per task.
    pub max_resources: Option<u32>,
    /// Host memory per task, in KiB.
    pub host_memory_kib: Option<u32>,
    /// Largest task result, in KiB.
    pub max_output_kib: Option<u32>,
}

impl Section for LimitKeys {
    const NAME: &'static str = "defaults";

    fn validate(&self) -> Result<(), String> {
        fn given<T: PartialOrd + std::fmt::Display + Copy>(
            key: &str,
            value: Option<T>,
            range: &RangeInclusive<T>,
        ) -> Result<(), String> {
            value.map_or(Ok(()), |v| check_range(key, v, range).map(drop))
        }
        given("memory_mb", self.memory_mb, &MEMORY_MB_RANGE)?;
        given("timeout_ms", self.timeout_ms, &TIMEOUT_MS_RANGE)?;
        given("max_timeout_ms", self.max_timeout_ms, &TIMEOUT_MS_RANGE)?;
        given("instance_reuse", self.instance_reuse, &INSTANCE_REUSE_RANGE)?;
        given(
            "instance_idle_ms",
            self.instance_idle_ms,
            &INSTANCE_IDLE_MS_RANGE,
        )?;
        given("max_resources", self.max_resources, &MAX_RESOURCES_RANGE)?;
        given(
            "host_memory_kib",
            self.host_memory_kib,
            &HOST_MEMORY_KIB_RANGE,
        )?;
        given("max_output_kib", self.max_output_kib, &MAX_OUTPUT_KIB_RANGE)
    }
}

impl LimitKeys {
    /// Every key as `limits` has it: what a key left out means.
    pub fn of(limits: &PluginLimits) -> Self {
        let millis = |d: Duration| Some(crate::settings::as_millis(d));
        let kib = |bytes: usize| Some(u32::try_from(bytes >> 10).unwrap_or(u32::MAX));
        Self {
            memory_mb: Some(u32::try_from(limits.memory_bytes >> 20).unwrap_or(u32::MAX)),
            timeout_ms: millis(limits.default_timeout),
            max_timeout_ms: millis(limits.max_timeout),
            instance_reuse: Some(limits.instance_reuse),
            instance_idle_ms: millis(limits.instance_idle),
            max_resources: Some(limits.max_resources),
            host_memory_kib: kib(limits.host_memory_bytes),
            max_output_kib: kib(limits.max_output_bytes),
        }
    }

    /// `base` with the keys given here put over it (checked by
    /// [`Section::validate`] first). A default budget inherited above the
    /// ceiling is lowered to it; one given above it is a contradiction,
    /// returned as (default, ceiling) in ms for the caller to name.
    pub fn over(&self, base: &PluginLimits) -> Result<PluginLimits, (u128, u128)> {
        let mut limits = base.clone();
        if let Some(mib) = self.memory_mb {
            limits.memory_bytes = (mib as usize) << 20;
        }
        if let Some(ms) = self.timeout_ms {
            limits.default_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.max_timeout_ms {
            limits.max_timeout = Duration::from_millis(ms);
        }
        if let Some(reuse) = self.instance_reuse {
            limits.instance_reuse = reuse;
        }
        if let Some(ms) = self.instance_idle_ms {
            limits.instance_idle = Duration::from_millis(ms);
        }
        if let Some(entries) = self.max_resources {
            limits.max_resources = entries;
        }
        if let Some(kib) = self.host_memory_kib {
            limits.host_memory_bytes = (kib as usize) << 10;
        }
        if let Some(kib) = self.max_output_kib {
            limits.max_output_bytes = (kib as usize) << 10;
        }
        limits.fit_default_timeout(self.timeout_ms.is_some())?;
        Ok(limits)
    }

    /// [`Self::validate`] then [`Self::over`], the errors starting with
    /// `name` (`defaults: …`, `plugin "a": …`).
    pub fn checked_over(&self, base: &PluginLimits, name: &str) -> Result<PluginLimits, String> {
        self.validate().map_err(|e| format!("{name}: {e}"))?;
        self.over(base).map_err(|(default, ceiling)| {
            format!("{name}: timeout_ms ({default} ms) is above max_timeout_ms ({ceiling} ms)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_left_out_inherit_and_the_default_budget_fits_the_ceiling() {
        let base = PluginLimits::default();
        assert_eq!(LimitKeys::default().over(&base), Ok(base.clone()));
        assert_eq!(LimitKeys::of(&base).over(&base), Ok(base.clone()));
        let lowered = LimitKeys {
            max_timeout_ms: Some(1000),
            ..LimitKeys::default()
        };
        assert_eq!(
            lowered.over(&base).unwrap().default_timeout,
            Duration::from_secs(1),
            "an inherited default is lowered to the ceiling"
        );
        let contradiction = LimitKeys {
            timeout_ms: Some(5000),
            max_timeout_ms: Some(1000),
            ..LimitKeys::default()
        };
        assert_eq!(
            contradiction.checked_over(&base, "defaults").unwrap_err(),
            "defaults: timeout_ms (5000 ms) is above max_timeout_ms (1000 ms)"
        );
        let small = LimitKeys {
            max_resources: Some(10),
            ..LimitKeys::default()
        };
        assert_eq!(
            small.validate().unwrap_err(),
            "max_resources must be between 64 and 1000000, got 10"
        );
    }
}

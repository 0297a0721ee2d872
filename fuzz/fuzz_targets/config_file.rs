//! The TOML configuration file (`iicp-host run --config`): any text gives
//! a configuration or one error naming what is wrong, never a panic; an
//! accepted configuration keeps every bound the node relies on. Secrets are
//! read from the environment variables the text names: the variables of
//! `iicp-host.example.toml` are set to fixed values before the first input,
//! so the seeded example is accepted and one input always gives one outcome.
//! An accepted `[pricing]` block is also signed in both forms, as REGISTER
//! and HEARTBEAT would sign it.
#![no_main]

use std::path::Path;

use iicp_host::config::file::parse;
use iicp_host::directory::identity::Credentials;
use iicp_host::directory::payload::pricing_block;
use iicp_host::runtime::limit_settings::{MEMORY_MB_RANGE, TIMEOUT_MS_RANGE};
use iicp_host::server::node_settings::MAX_CONCURRENT_RANGE;
use libfuzzer_sys::fuzz_target;

/// Secret variables the example configuration names.
const SECRET_VARIABLES: [&str; 5] = [
    "IICP_ADMIN_TOKEN",
    "IICP_NODE_HMAC_KEY",
    "TOOLS_API_KEY",
    "ACME_TOKEN",
    "GLOBEX_TOKEN",
];

fuzz_target!(
    init: {
        for variable in SECRET_VARIABLES {
            // SAFETY: libFuzzer calls init once, before any input and on
            // its only thread; nothing reads the environment concurrently.
            unsafe { std::env::set_var(variable, "fuzz-secret") };
        }
    },
    |text: &str| check(text)
);

/// Parses `text` and checks what an accepted configuration promises.
fn check(text: &str) {
    let base = Path::new("/etc/iicp");
    let config = match parse(text, base) {
        Ok(config) => config,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let max_concurrent = config.node.max_concurrent();
    assert!(MAX_CONCURRENT_RANGE.contains(&max_concurrent));
    assert!(!config.plugins.is_empty());
    let mut ids = std::collections::HashSet::new();
    let mut intents = std::collections::HashSet::new();
    for plugin in &config.plugins {
        let source = &plugin.source;
        assert!(source.path.is_absolute(), "{:?}", source.path);
        let memory_mb = (source.limits.memory_bytes >> 20) as u32;
        assert!(MEMORY_MB_RANGE.contains(&memory_mb));
        let timeout_ms = source.limits.default_timeout.as_millis() as u64;
        assert!(TIMEOUT_MS_RANGE.contains(&timeout_ms));
        if let Some(max) = plugin.max_concurrent {
            assert!((1..=max_concurrent).contains(&max));
        }
        if let Some(id) = &source.id {
            assert!(ids.insert(id.clone()), "duplicate id {id}");
        }
        for intent in plugin.intents.iter().flatten() {
            assert!(!intent.is_empty() && !intent.chars().any(char::is_whitespace));
            assert!(intents.insert(intent.clone()), "duplicate intent {intent}");
        }
    }
    if let Some(state_dir) = &config.node.state_dir {
        assert!(state_dir.is_absolute());
    }
    if let Some(directory) = &config.directory {
        let credentials = Credentials {
            node_id: "fuzz".to_string(),
            node_token: Some("token".to_string()),
            directory_hmac_key: Some("key".to_string()),
            operator_hmac_key: None,
        };
        let block = pricing_block(&directory.pricing, &credentials);
        let multiplier = &block["credit_cost_multiplier"];
        assert!(multiplier.is_number(), "{block}");
    }
}

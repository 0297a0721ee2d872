//! `iicp-host check PLUGIN`: does the component fit the `iicp:plugin`
//! world, what does it declare, what does it import — and, when it does not
//! fit, why, with everything it imports and exports.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::runtime::artifact::ComponentFacts;
use crate::runtime::plugin::PluginSource;

/// Interfaces this host provides, by name prefix (any 0.2.x WASI version).
const PROVIDED: &[&str] = &[
    "iicp:plugin/log@",
    "iicp:plugin/config@",
    "iicp:plugin/types@",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:http/types@0.2",
    "wasi:http/outgoing-handler@0.2",
];

fn provided(import: &str) -> bool {
    PROVIDED.iter().any(|prefix| import.starts_with(prefix))
}

fn list(out: &mut String, title: &str, names: &[String], mark_missing: bool) {
    let _ = writeln!(out, "{title}:");
    if names.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for name in names {
        let note = if mark_missing && !provided(name) {
            "   <- not provided by iicp-host"
        } else {
            ""
        };
        let _ = writeln!(out, "  {name}{note}");
    }
}

fn facts_text(facts: &ComponentFacts) -> String {
    let mut out = String::new();
    list(&mut out, "imports", &facts.imports, true);
    list(&mut out, "exports", &facts.exports, false);
    out
}

/// Checks `plugin`; `Ok` is the report, `Err` the explanation.
/// (`precompiled`: it may be a compiled artifact).
pub async fn check(
    plugin: &Path,
    config: BTreeMap<String, String>,
    precompiled: bool,
) -> Result<String, String> {
    let (runtime, fetcher) = (super::runtime()?, super::fetcher());
    let mut source = PluginSource::new(plugin.to_path_buf());
    source.config = config;
    source.precompiled = precompiled;
    let facts = runtime
        .inspect(plugin, source.precompiled_policy())
        .map_err(|e| format!("error: {e}"))?;
    let loaded = match fetcher.load(&runtime, &source).await {
        Ok(loaded) => loaded,
        Err(error) => {
            return Err(format!(
                "error: {error}\n{}hint: build it against wit/plugin.wit; `iicp-host new --lang rust NAME` makes a skeleton that fits",
                facts_text(&facts)
            ));
        }
    };
    let mut out = String::new();
    let info = &loaded.info;
    let _ = writeln!(
        out,
        "ok: {} {} fits the iicp:plugin world",
        info.name, info.version
    );
    let _ = writeln!(
        out,
        "file: {} ({} bytes, sha256 {})",
        plugin.display(),
        facts.size,
        facts.sha256
    );
    let _ = writeln!(out, "intents:");
    for capability in &info.capabilities {
        let models = if capability.models.is_empty() {
            "-".to_string()
        } else {
            capability.models.join(",")
        };
        let max_tokens = capability
            .max_tokens
            .map_or("-".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "  {}  models: {models}  max_tokens: {max_tokens}  input: {}",
            capability.intent,
            capability.input_modalities.join(",")
        );
    }
    out.push_str(&facts_text(&facts));
    Ok(out)
}

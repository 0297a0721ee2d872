//! Every command but `run` (plugin authoring and publishing, shell
//! completions, man pages): its flags and what each one runs.

// The doc comments of the flags are their `--help` text, written for a
// terminal, not for rustdoc.
#![allow(
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::call::CallArgs;
use super::new::Lang;
use crate::config::flags::RegistryArgs;
use crate::oci::OciSettings;

/// Every command but `run`: plugin authoring and publishing, shell
/// completions, man pages.
#[derive(Subcommand)]
pub enum ToolCommand {
    /// Check that a plugin fits the iicp:plugin world; show what it declares and imports.
    Check {
        /// The plugin (.wasm component, or a compiled artifact with --precompiled).
        plugin: PathBuf,
        /// A config value the plugin reads (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// The plugin may be a compiled artifact (`iicp-host compile`): native
        /// code run as this user; only for files you compiled yourself.
        #[arg(long)]
        precompiled: bool,
    },
    /// Run one task through a plugin, without HTTP; print the result and the time taken.
    Call {
        /// The plugin (.wasm component, or a compiled artifact with --precompiled).
        plugin: PathBuf,
        /// The plugin may be a compiled artifact (`iicp-host compile`): native
        /// code run as this user; only for files you compiled yourself.
        #[arg(long)]
        precompiled: bool,
        /// The intent [default: the plugin's first].
        #[arg(long)]
        intent: Option<String>,
        /// The payload as JSON, or @FILE.
        #[arg(long, default_value = "null")]
        payload: String,
        /// A config value the plugin reads (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// A secret the plugin reads, from an environment variable (repeatable).
        #[arg(long = "secret", value_name = "KEY=ENV_VAR")]
        secrets: Vec<String>,
        /// Allow outbound HTTP to a scheme://host[:port] pattern (repeatable).
        #[arg(long = "allow-http", value_name = "PATTERN")]
        allow_http: Vec<String>,
        /// The task's budget, in ms.
        #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
        timeout_ms: u64,
    },
    /// Compile a plugin ahead of time; `run --plugin OUT` loads it without compiling.
    Compile {
        /// The .wasm component.
        plugin: PathBuf,
        /// Where to write the compiled artifact.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Publish a plugin component to an OCI registry (Wasm OCI artifact
    /// convention); nodes then run it with --plugin oci://REGISTRY/REPO:TAG.
    Push {
        /// The .wasm component.
        plugin: PathBuf,
        /// Where to push it: oci://REGISTRY/REPOSITORY:TAG.
        reference: String,
        /// How to talk to the registry.
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print shell completions (to stdout), e.g.
    /// `iicp-host completions bash > /etc/bash_completion.d/iicp-host`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per command
    /// into a directory (iicp-host.1, iicp-host-run.1, ...).
    Man {
        /// Where to write every page.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Create a plugin skeleton that builds and passes `check` as generated.
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The plugin's name (lowercase letters, digits, '-').
        name: String,
        /// Where to create it [default: the current directory].
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the iicp-plugin-sdk crate (Rust) [default: the one in these sources].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// Prints a tool's outcome: success to stdout, failure to stderr with a non-zero exit.
fn finish(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(text) => {
            eprintln!("{}", text.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// The man pages, generated from the command definitions (`command`): the main
/// page to stdout, or every page into `out_dir`.
fn man_pages(command: clap::Command, out_dir: Option<&std::path::Path>) -> Result<String, String> {
    let render = |command: clap::Command| -> Result<Vec<u8>, String> {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .map_err(|e| format!("error: {e}"))?;
        Ok(page)
    };
    let Some(dir) = out_dir else {
        return String::from_utf8(render(command)?).map_err(|e| format!("error: {e}"));
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("error: {}: {e}", dir.display()))?;
    let mut pages = vec![("iicp-host".to_string(), command.clone())];
    for sub in command.get_subcommands() {
        let name = format!("iicp-host-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in &pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(page.clone())?)
            .map_err(|e| format!("error: {}: {e}", path.display()))?;
    }
    Ok(format!(
        "wrote {} man pages to {}",
        pages.len(),
        dir.display()
    ))
}

/// `KEY=ENV_VAR` pairs resolved from the environment.
fn secrets_from_env(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, String> {
    super::key_values(pairs, "--secret")?
        .into_iter()
        .map(|(key, variable)| match std::env::var(&variable) {
            Ok(value) => Ok((key, value)),
            Err(_) => Err(format!(
                "--secret {key}: environment variable {variable} is not set"
            )),
        })
        .collect()
}

/// Runs a command other than `run`; `cli` is the whole command line's
/// definition, for completions and man pages.
pub async fn run(command: ToolCommand, cli: clap::Command) -> ExitCode {
    match command {
        ToolCommand::Check {
            plugin,
            config,
            precompiled,
        } => {
            let outcome = match super::key_values(&config, "--config") {
                Ok(config) => super::check::check(&plugin, config, precompiled).await,
                Err(error) => Err(format!("error: {error}")),
            };
            finish(outcome)
        }
        ToolCommand::Call {
            plugin,
            precompiled,
            intent,
            payload,
            config,
            secrets,
            allow_http,
            timeout_ms,
        } => {
            let args = super::key_values(&config, "--config").and_then(|config| {
                Ok(CallArgs {
                    plugin,
                    precompiled,
                    intent,
                    payload,
                    config,
                    secrets: secrets_from_env(&secrets)?,
                    allow_http,
                    timeout: Duration::from_millis(timeout_ms),
                })
            });
            match args {
                Ok(args) => finish(super::call::call(args).await),
                Err(error) => finish(Err(format!("error: {error}"))),
            }
        }
        ToolCommand::Compile { plugin, out } => {
            finish(super::compile::compile(&plugin, &out).map_err(|e| format!("error: {e}")))
        }
        ToolCommand::Push {
            plugin,
            reference,
            registry,
        } => {
            let mut settings = OciSettings::default();
            match registry.apply(&mut settings) {
                Ok(()) => finish(
                    super::push::push(&plugin, &reference, &settings)
                        .await
                        .map_err(|e| format!("error: {e}")),
                ),
                Err(error) => finish(Err(format!("error: {error}"))),
            }
        }
        ToolCommand::Completions { shell } => {
            clap_complete::generate(shell, &mut cli.clone(), "iicp-host", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        ToolCommand::Man { out_dir } => finish(man_pages(cli, out_dir.as_deref())),
        ToolCommand::New {
            lang,
            name,
            dir,
            sdk,
        } => finish(
            super::new::new_plugin(lang, &name, &dir, sdk.as_deref())
                .map(|path| {
                    format!(
                        "created {} — build it with {}/build.sh",
                        path.display(),
                        path.display()
                    )
                })
                .map_err(|e| format!("error: {e}")),
        ),
    }
}

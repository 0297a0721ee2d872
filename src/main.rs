//! The `iicp-host` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use iicp_host::config::{self, NodeConfig};
use iicp_host::runtime::RuntimeSettings;
use iicp_host::runtime::engine::{AllocatorChoice, EngineSettings};
use iicp_host::runtime::limits::PluginLimits;
use iicp_host::runtime::plugin::PluginSource;
use iicp_host::telemetry::{self, LogFormat};

/// An IICP provider node that runs task handlers as sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "iicp-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve IICP tasks through a plugin.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The plugin component (.wasm) to serve; it declares its own intents.
    #[arg(long)]
    plugin: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tasks run at once; more are refused with 429.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONCURRENT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(config::MAX_CONCURRENT_LIMIT)))]
    max_concurrent: u32,
    /// Linear memory per task, in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    memory_mb: u32,
    /// Task budget when the consumer sets no constraints.timeout_ms.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    timeout_ms: u64,
    /// Node id in the mesh (default: a new UUID).
    #[arg(long)]
    node_id: Option<String>,
    /// Region advertised.
    #[arg(long, default_value = "unknown")]
    region: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most nonces remembered for replay protection.
    #[arg(long, default_value_t = config::DEFAULT_NONCE_CAPACITY)]
    nonce_cache_capacity: usize,
    /// How long shutdown waits for in-flight tasks, in ms.
    #[arg(long, default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// Directory for compiled plugins (default: ~/.cache/iicp-host).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile plugins on every start instead of caching them.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Instance allocator.
    #[arg(long, value_enum, default_value_t = AllocatorChoice::Auto)]
    allocator: AllocatorChoice,
    /// Serve up to N tasks with one plugin instance instead of a fresh
    /// instance per task. Faster, but a task can see memory an earlier task
    /// of the same plugin left behind; 1 (the default) keeps tasks isolated.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    instance_reuse: u32,
    /// Memory kept warm per pooled instance slot, in KiB (default: 1024 when
    /// the kernel supports PAGEMAP_SCAN, else 64).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    keep_resident_kib: Option<u32>,
}

impl RunArgs {
    fn into_config(self) -> NodeConfig {
        let limits = PluginLimits {
            memory_bytes: (self.memory_mb as usize) << 20,
            default_timeout: Duration::from_millis(self.timeout_ms),
            instance_reuse: self.instance_reuse,
            ..PluginLimits::default()
        };
        NodeConfig {
            node_id: self
                .node_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            region: self.region,
            listen: self.listen,
            max_concurrent: self.max_concurrent,
            max_body_bytes: self.max_body_bytes,
            nonce_capacity: self.nonce_cache_capacity,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            runtime: RuntimeSettings {
                engine: EngineSettings {
                    max_instances: self.max_concurrent,
                    keep_resident_bytes: self.keep_resident_kib.map(|kib| (kib as usize) << 10),
                    allocator: self.allocator,
                },
                cache_dir: if self.no_cache {
                    None
                } else {
                    self.cache_dir.or_else(config::default_cache_dir)
                },
            },
            plugins: vec![PluginSource {
                id: None,
                path: self.plugin,
                limits,
            }],
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            telemetry::init(args.log_format);
            match iicp_host::node::run(args.into_config(), iicp_host::node::shutdown_signal()).await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("iicp-host: error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

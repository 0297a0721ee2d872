//! The `iicp-host` command line.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use iicp_host::config::file::PluginFileCache;
use iicp_host::config::flags::RunArgs;
use iicp_host::reload::ConfigSource;
use iicp_host::telemetry;
use iicp_host::tools::cli::ToolCommand;

/// An IICP provider node that runs task handlers as sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "iicp-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve IICP tasks through plugins.
    Run(Box<RunArgs>),
    #[command(flatten)]
    Tool(ToolCommand),
}

/// mimalloc in place of glibc's malloc (docs/performance.md, "CPU per
/// task, third round"); `heap::return_freed_pages_at_once` keeps the
/// node's memory coming back after a burst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    iicp_host::heap::return_freed_pages_at_once();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Tool(command) => {
            return match runtime() {
                Ok(runtime) => {
                    runtime.block_on(iicp_host::tools::cli::run(command, Cli::command()))
                }
                Err(code) => code,
            };
        }
    };
    let log_format = args.log_format;
    let plugin_files = PluginFileCache::default();
    let config = match args.to_config(&plugin_files) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("iicp-host: error: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Telemetry lives outside the async runtime: the span exporter runs on
    // a thread of its own, and its final flush blocks.
    let telemetry = telemetry::init(log_format, &config.telemetry);
    let code = match runtime() {
        Ok(runtime) => runtime.block_on(async move {
            let reload_source: ConfigSource = Arc::new(move || args.to_config(&plugin_files));
            match iicp_host::node::run(
                config,
                Some(reload_source),
                iicp_host::node::shutdown_signal(),
            )
            .await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("iicp-host: error: {error}");
                    ExitCode::FAILURE
                }
            }
        }),
        Err(code) => code,
    };
    telemetry.shutdown();
    code
}

/// The multi-threaded async runtime.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(iicp_host::heap::collect_own_heap_if_asked)
        .build()
        .map_err(|error| {
            eprintln!("iicp-host: error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

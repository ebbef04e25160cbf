//! The `airlock` command: run untrusted code in a sandbox, check what works on this
//! host, and measure it. One file per subcommand under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;
mod exit;
mod term;

/// Run untrusted, model-written code safely and fast.
#[derive(Parser, Debug)]
#[command(name = "airlock", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More logging (-v info, -vv debug); also RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run code in a fresh sandbox and print what it printed.
    Run(Box<cmd::run::RunArgs>),
    /// Say which backends work on this host, and how to fix those that do not.
    Doctor(cmd::doctor::DoctorArgs),
    /// Measure start-up and run latency of each backend against bare python3.
    Bench(cmd::bench::BenchArgs),
    /// Prepare what a backend needs on this host (the microvm guest image, the wasm snapshot), once.
    Setup(cmd::setup::SetupArgs),
    /// Serve the HTTP API (sessions, files, streaming, audit log) and MCP at /mcp.
    Serve(cmd::serve::ServeArgs),
    /// Serve MCP on stdin/stdout (a drop-in for mcp-run-python).
    Mcp(cmd::mcp::McpArgs),
    /// Create, list and revoke the server's API keys.
    Keys(cmd::keys::KeysArgs),
}

fn main() {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let code = match cli.command {
        Command::Run(a) => cmd::run::main(*a),
        Command::Doctor(a) => cmd::doctor::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Setup(a) => cmd::setup::main(a),
        Command::Serve(a) => cmd::serve::main(a),
        Command::Mcp(a) => cmd::mcp::main(a),
        Command::Keys(a) => cmd::keys::main(a),
    };
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            // Errors can quote a server or a guest: shown, not obeyed, on a terminal.
            eprintln!("airlock: error: {}", cmd::run::for_stderr(&format!("{e:#}")));
            exit::HOST_ERROR
        }
    };
    std::process::exit(code);
}

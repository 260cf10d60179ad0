//! `shoal`: the one binary. `shoal daemon …` runs a node; every other
//! subcommand is a client of a manager's HTTP API (`-H` / `SHOAL_HOST`).
//!
//! - [`daemon`]: bootstrapping, joining, resuming and running a node.
//! - [`service`], [`node`]: the client commands.
//! - [`output`]: tables, progress and log lines, exactly as docker prints them.
//! - [`client`]: the HTTP client.

mod client;
mod daemon;
mod node;
mod output;
mod progress;
mod service;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shoal", version, about = "A container orchestrator that does what Docker Swarm mode does")]
struct Cli {
    /// Manager API to talk to (IP:PORT).
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", default_value = "127.0.0.1:4243", global = true)]
    host: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: bootstrap a cluster (--init), join one (--join), or resume (--data-dir).
    Daemon(daemon::DaemonArgs),
    /// Show the command to join a worker or a manager.
    JoinToken {
        /// worker or manager
        role: String,
        /// Only print the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
}

/// Logs go to stderr; `RUST_LOG` sets the level (default: info, raft at warn).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn,chitchat=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(args) => {
            init_logging();
            daemon::run(args)
        }
        Command::JoinToken { role, quiet } => node::join_token(&client::Client::new(&cli.host), &role, quiet),
        Command::Node(cmd) => node::run(&client::Client::new(&cli.host), cmd),
        Command::Service(cmd) => service::run(&client::Client::new(&cli.host), cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(args) => daemon::run(args),
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

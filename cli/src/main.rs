//! `shoal`: the one binary. `shoal daemon …` runs a node; every other
//! subcommand is a client of a manager's HTTP API (`-H` / `SHOAL_HOST`).
//!
//! - [`daemon`]: bootstrapping, joining, resuming and running a node.
//! - [`service`], [`node`], [`network`]: the client commands.
//! - [`output`]: tables, progress and log lines, exactly as docker prints them.
//! - [`client`]: the HTTP client.

mod cert;
mod client;
mod container_flags;
mod events;
mod files;
mod list;
mod network;
mod node;
mod output;
mod placement;
mod progress;
mod registry_auth;
mod service;
mod unlock;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::daemon;

#[derive(Parser)]
#[command(name = "shoal", version, about = "A container orchestrator that does what Docker Swarm mode does")]
struct Cli {
    /// Manager API to talk to (IP:PORT); before the subcommand, as with `docker -H`
    /// (after it, `--host` is `service create --host HOST:IP`).
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", default_value = "127.0.0.1:4243")]
    host: String,
    #[command(flatten)]
    tls: client::TlsFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Run a node: bootstrap a cluster (--init), join one (--join), or resume (--data-dir).
    Daemon(daemon::DaemonArgs),
    /// Simulate a cluster in this process: real managers and N nodes over
    /// an in-memory container runtime; place T tasks and time it.
    Sim(cli::sim::SimArgs),
    /// Show the command to join a worker or a manager.
    JoinToken {
        /// worker or manager
        role: String,
        /// Only print the token.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token: the old one admits no new node (nodes already
        /// joined keep working).
        #[arg(long)]
        rotate: bool,
    },
    /// Stream cluster events (services, tasks, nodes) as they happen.
    Events {
        /// Replay kept events since this time: a duration ago (`10m`), RFC 3339, or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// type=service|task|node (repeatable)
        #[arg(short, long)]
        filter: Vec<String>,
        /// `json` for one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage secrets (values mounted into tasks under /run/secrets, never shown).
    #[command(subcommand)]
    Secret(files::FileCmd),
    /// Manage configs (values mounted into tasks as files).
    #[command(subcommand)]
    Config(files::FileCmd),
    /// Unlock a manager started with autolock: reads the unlock key from
    /// standard input (prompting, without echo, on a terminal).
    Unlock,
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// The key that seals gossip: `shoal gossip-key rotate` makes a new one
    /// (every node switches to it within seconds; the old one is refused
    /// soon after).
    GossipKey {
        #[command(subcommand)]
        cmd: node::GossipKeyCmd,
    },
    /// API client certificates: `shoal cert issue` writes a bundle that the
    /// shoal and docker CLIs use with --tlsverify.
    Cert {
        #[command(subcommand)]
        cmd: cert::CertCmd,
    },
}

/// Logs go to stderr; `RUST_LOG` sets the level (default: `default`).
fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let Cli { host, tls, command } = Cli::parse();
    let api = || client::Client::connect(&host, &tls);
    let result = match command {
        Command::Daemon(args) => {
            init_logging("info,raft=warn,chitchat=warn");
            daemon::run(args)
        }
        Command::Sim(args) => {
            // Thousands of nodes: only what goes wrong.
            init_logging("warn,raft=error,chitchat=error");
            cli::sim::run(args)
        }
        Command::JoinToken { role, quiet, rotate } => api().and_then(|c| node::join_token(&c, &role, quiet, rotate)),
        Command::Node(cmd) => api().and_then(|c| node::run(&c, cmd)),
        Command::Events { since, filter, format } => api().and_then(|c| events::run(&c, since, filter, format)),
        Command::Service(cmd) => api().and_then(|c| service::run(&c, cmd)),
        Command::Secret(cmd) => api().and_then(|c| files::run(&c, common::secret::Kind::Secret, cmd)),
        Command::Config(cmd) => api().and_then(|c| files::run(&c, common::secret::Kind::Config, cmd)),
        Command::Unlock => api().and_then(|c| unlock::run(&c)),
        Command::Network(cmd) => api().and_then(|c| network::run(&c, cmd)),
        Command::GossipKey { cmd } => api().and_then(|c| node::gossip_key(&c, cmd)),
        Command::Cert { cmd } => api().and_then(|c| cert::run(&c, cmd)),
    };
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every flag is read back, defaults included: a type mismatch between a
    /// flag's parser and its field only shows when the value is taken.
    #[test]
    fn daemon_and_service_flags_parse_with_their_defaults() {
        for args in [
            vec!["shoal", "daemon", "--init", "--advertise-addr", "127.0.0.11"],
            vec!["shoal", "daemon", "--data-dir", "/x", "--mesh", "userspace"],
            vec!["shoal", "service", "create", "--name", "a", "-p", "80", "img", "ping", "-c", "1", "127.0.0.1"],
            vec!["shoal", "service", "update", "--update-parallelism", "2", "--rollback-delay", "1s", "--force", "a"],
            vec!["shoal", "service", "create", "--detach=false", "--replicas", "-1", "img"],
            vec!["shoal", "node", "update", "--availability", "drain", "n1"],
            vec!["shoal", "events", "--since", "10m", "--filter", "type=task", "--format", "json"],
            vec!["shoal", "join-token", "--rotate", "-q", "worker"],
            vec!["shoal", "secret", "create", "-l", "a=b", "pw", "-"],
            vec!["shoal", "config", "ls", "-q"],
            vec!["shoal", "service", "create", "--secret", "pw", "--config", "source=c,target=/c", "img"],
            vec!["shoal", "service", "update", "--secret-add", "pw", "--secret-rm", "old", "a"],
            vec!["shoal", "-H", "127.0.0.11:4243", "service", "logs", "-f", "-n", "2", "a"],
            vec!["shoal", "daemon", "--init", "--autolock", "--advertise-addr", "127.0.0.11"],
            vec!["shoal", "-H", "127.0.0.11:4243", "unlock"],
            vec!["shoal", "cert", "issue", "--name", "alice", "--role", "readonly", "--output", "/tmp/x"],
            vec!["shoal", "--tlsverify", "--tlscacert", "a", "--tlscert", "b", "--tlskey", "c", "service", "ls"],
            vec!["shoal", "daemon", "--api-addr", "0.0.0.0:4243", "--api-tls"],
            vec!["shoal", "sim", "--nodes", "5", "--managers", "1", "--tasks", "10", "--timeout", "90s", "--hold"],
        ] {
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["shoal", "daemon", "--mesh", "fast"]).is_err());
        for (value, tls) in [("1", true), ("yes", true), ("0", false), ("", false)] {
            std::env::set_var("DOCKER_TLS_VERIFY", value);
            let cli = Cli::try_parse_from(["shoal", "service", "ls"]).unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(cli.tls.tlsverify, tls, "DOCKER_TLS_VERIFY={value:?}");
        }
        std::env::remove_var("DOCKER_TLS_VERIFY");
        assert!(Cli::try_parse_from(["shoal", "daemon", "--autolock"]).is_err(), "autolock is chosen at --init");
        assert!(Cli::try_parse_from(["shoal", "daemon", "--init", "--join", "1.2.3.4:4242", "--token", "t"]).is_err());
    }
}

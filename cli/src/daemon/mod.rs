//! `shoal daemon`: bootstrap (`--init`), join (`--join`), or resume a node
//! from its data directory, then run it until SIGINT/SIGTERM.
//!
//! A node's identity lives in `DATA_DIR/node.json`, its TLS key and
//! certificates under `DATA_DIR/tls` (see `worker::node::tls`); managers keep the
//! raft log under `DATA_DIR/raft`. Containers keep running when the daemon
//! stops; a restarted node adopts them.
//!
//! Layout: this module parses the flags and decides between init, join and
//! resume; [`state`] is the data directory, `join` the admission by a
//! manager, `node` the running node, `role` a change of role (a new
//! certificate, then a restart in the new role), `keys` the data key of a
//! manager's raft files (and autolock), `gossip` the node's sealed copy of
//! the gossip keys.

mod describe;
mod gossip;
mod join;
mod keys;
mod node;
mod renew;
mod role;
pub mod state;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use common::network::AddrPool;
use common::node::Role;
use futures::future::BoxFuture;
use manager::raft::storage::keys::DataKey;
use worker::mesh::DataPath;
use worker::node::api_tls::needs_tls;
use worker::runtime::Runtime;

use join::join_cluster;
use node::{run_node, RunOptions};
use role::reexec;
use state::{init_identity, init_state, load_state, load_tls, raft_dir, resume, save_state};

pub const DEFAULT_PORT: u16 = 4242;

pub const DEFAULT_API: &str = "127.0.0.1:4243";

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Bootstrap a new cluster with this node as its first manager.
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// With --init: encrypt the raft data with a key that is printed once
    /// and stored nowhere; a restarted manager stays locked until `shoal
    /// unlock` gives it that key.
    #[arg(long, requires = "init")]
    autolock: bool,
    /// With --init: where overlay networks created without --subnet get
    /// their range (CIDR; repeatable, used in order). Default 10.0.0.0/8.
    #[arg(long = "default-addr-pool", value_name = "CIDR", requires = "init")]
    default_addr_pools: Vec<common::network::Subnet>,
    /// With --init: the prefix length of each network's range cut from the
    /// default address pools (8 to 26). Default 16.
    #[arg(long, value_name = "N", requires = "init")]
    default_addr_pool_mask_length: Option<u8>,
    /// With --init: how long node certificates are valid (a Go duration, as
    /// `docker swarm init --cert-expiry` takes: `2160h`, `1h30m`; at least
    /// 1h). Default 2160h (90 days). Every node renews its certificate at
    /// 2/3 of its lifetime.
    #[arg(long, requires = "init", value_name = "DURATION", value_parser = parse_cert_expiry)]
    cert_expiry: Option<std::time::Duration>,
    /// TEST ONLY (hidden): with --init, node certificates valid for this
    /// many seconds (at least 10), below --cert-expiry's 1h minimum, so
    /// that a test sees renewals happen.
    #[arg(long, hide = true, requires = "init", conflicts_with = "cert_expiry", value_name = "SECS",
          value_parser = parse_test_cert_expiry)]
    test_cert_expiry_secs: Option<std::time::Duration>,
    /// Join the cluster of the manager at MANAGER_IP:PORT.
    #[arg(long, value_name = "MANAGER_IP:PORT", requires = "token")]
    join: Option<String>,
    /// Join token (its kind decides whether this node is a worker or a manager).
    #[arg(long)]
    token: Option<String>,
    /// The address other nodes reach this one at.
    #[arg(long, value_name = "IP")]
    advertise_addr: Option<IpAddr>,
    /// Cluster port: TCP for node-to-node frames, UDP for gossip.
    #[arg(long)]
    port: Option<u16>,
    /// Where the HTTP API listens (default 127.0.0.1:4243).
    #[arg(long, value_name = "IP:PORT")]
    api_addr: Option<SocketAddr>,
    /// Serve the API over TLS, requiring client certificates issued by the
    /// cluster CA (`shoal cert issue`). Required for an --api-addr other
    /// than loopback; managers only.
    #[arg(long)]
    api_tls: bool,
    /// At most this many API connections at once (past their TLS
    /// handshake). Over it, the oldest connection that has not sent its
    /// request yet is closed for the new one, or the new one is closed at
    /// once when every connection is busy. Lowered to fit the open-file limit.
    #[arg(long, value_name = "N", default_value_t = manager::api::limits::DEFAULT_MAX_CONNECTIONS)]
    api_max_connections: usize,
    /// Also serve the Docker Engine API on this unix socket (a container can
    /// mount it at /var/run/docker.sock). Managers answer everything; a
    /// worker answers `/_ping` and says it is not a manager.
    #[arg(long, value_name = "PATH")]
    docker_socket: Option<PathBuf>,
    /// The node's state: identity, raft log.
    #[arg(long, default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// Hostname shown for this node (default: the machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// Raft entries between snapshots (log compaction).
    #[arg(long, default_value_t = 10_000, hide = true)]
    snapshot_interval: u64,
    /// Routing-mesh data path: `kernel` (nftables DNAT; needs root and nft),
    /// `userspace` (a proxy in this process; no privileges), or `auto`
    /// (kernel where it works, else userspace, with a warning).
    #[arg(long, default_value = "auto")]
    mesh: MeshChoice,
    /// Disaster recovery: restart this manager as the only manager of a
    /// cluster that keeps all its services, when a majority of managers is
    /// lost for good. The other managers become workers.
    #[arg(long, conflicts_with_all = ["init", "join"])]
    force_new_cluster: bool,
    /// Managers: at most this much raft log and snapshot under DATA_DIR/raft
    /// (`64MiB`, `1G`, bytes). The log is compacted as it nears the quota;
    /// past it writes are refused (the disk alarm). Default: half the free
    /// space at start, at most 8 GiB more than the raft files already take.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    storage_quota: Option<u64>,
    #[command(flatten)]
    describe: describe::DescribeFlags,
}

/// A size: bytes, or a number with a unit (`k`/`KiB`/`KB`, `M`, `G`, `T`;
/// all powers of 1024, as Docker's sizes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid size {s:?}: expected a number, e.g. 64MiB"))?;
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?} (use k, M, G or T)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// `--cert-expiry`: a Go duration (docker's `swarm init --cert-expiry`
/// takes the same), at least [`MIN_CERT_EXPIRY`] (1h, as in Swarm).
pub fn parse_cert_expiry(s: &str) -> Result<std::time::Duration, String> {
    use worker::node::tls::MIN_CERT_EXPIRY;
    let ns = common::container::positive_duration(s.trim())?;
    let d = std::time::Duration::from_nanos(ns);
    if d < MIN_CERT_EXPIRY {
        return Err(format!("the certificate expiry must be at least 1h (got {s})"));
    }
    Ok(d)
}

/// `--test-cert-expiry-secs`: whole seconds, at least [`MIN_TEST_CERT_EXPIRY`].
fn parse_test_cert_expiry(s: &str) -> Result<std::time::Duration, String> {
    use worker::node::tls::MIN_TEST_CERT_EXPIRY;
    let secs: u64 = s.trim().parse().map_err(|_| format!("invalid number of seconds {s:?}"))?;
    let d = std::time::Duration::from_secs(secs);
    if d < MIN_TEST_CERT_EXPIRY {
        return Err(format!("at least {}s", MIN_TEST_CERT_EXPIRY.as_secs()));
    }
    Ok(d)
}

/// `--mesh`: a data path, or `auto` (decided at start by what works here).
#[derive(Clone, Copy, Debug)]
pub struct MeshChoice(Option<DataPath>);

impl std::str::FromStr for MeshChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MeshChoice(None)),
            other => other.parse().map(|p| MeshChoice(Some(p))).map_err(|e: String| format!("{e} (or auto)")),
        }
    }
}

/// How a node runs besides its flags. `shoal daemon` uses Docker and stops
/// on SIGINT/SIGTERM; an in-process test hands in a test double and a
/// future of its own.
#[derive(Default)]
pub struct Launch {
    /// The container runtime; `None` connects to Docker.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// The node stops when this resolves; `None` waits for SIGINT/SIGTERM.
    pub shutdown: Option<BoxFuture<'static, ()>>,
    /// Print nothing on stdout (the join commands after `--init`): for a
    /// launcher that prints its own output.
    pub quiet: bool,
    /// Liveness from a board shared in this process instead of gossip
    /// (`shoal sim`: thousands of nodes in one process; see
    /// `worker::node::membership::Board`).
    pub liveness: Option<worker::node::membership::Board>,
    /// Fewer threads per node, for many nodes in one process: the mesh's
    /// userspace proxy runs on the node's own thread.
    pub light: bool,
    /// No HTTP API (`shoal sim`'s worker nodes: nobody asks them, and an
    /// API server is two threads of its own).
    pub no_api: bool,
}

/// How a node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown asked for (a signal, or the launcher's future).
    Stopped,
    /// The node's role changed and it holds a certificate for the new one:
    /// it must start again, from the same data directory, in that role.
    RoleChanged(Role),
}

impl DaemonArgs {
    /// Parses `shoal daemon`'s flags (without `shoal daemon` itself), for
    /// code that starts a node in-process.
    pub fn from_flags<I, S>(flags: I) -> Result<DaemonArgs, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        use clap::FromArgMatches;
        let cmd = DaemonArgs::augment_args(clap::Command::new("daemon").no_binary_name(true));
        DaemonArgs::from_arg_matches(&cmd.try_get_matches_from(flags)?)
    }
}

/// `shoal daemon`: runs the node until a signal; a change of role replaces
/// the process with one in the new role.
pub fn run(args: DaemonArgs) -> Result<ExitCode> {
    let outcome = match run_with(args, Launch::default()) {
        Ok(outcome) => outcome,
        Err(e) => return failed(e),
    };
    match outcome {
        Outcome::Stopped => Ok(ExitCode::SUCCESS),
        Outcome::RoleChanged(role) => {
            tracing::info!(%role, "restarting in the new role");
            Err(reexec())
        }
    }
}

/// Damaged or unreadable raft data (a data key that does not open, a
/// corrupt log) stops the node with the exit status the raft log uses for
/// corruption (EX_DATAERR); anything else goes up as a plain error.
fn failed(e: anyhow::Error) -> Result<ExitCode> {
    use manager::raft::storage::keys::KeyError;
    let corrupt = match (e.downcast_ref::<KeyError>(), e.downcast_ref::<manager::raft::RaftError>()) {
        (Some(KeyError::Damaged { .. }), _) => true,
        (_, Some(r)) => manager::raft::exit_reason(r).1 == manager::raft::EXIT_CORRUPT,
        _ => false,
    };
    if !corrupt {
        return Err(e);
    }
    tracing::error!(error = %e, exit_status = manager::raft::EXIT_CORRUPT, "cannot read the raft data; stopping the node");
    eprintln!("Error: {e:#}");
    Ok(ExitCode::from(manager::raft::EXIT_CORRUPT as u8))
}

/// Brings the node up from its data directory (making or joining a cluster
/// first if the flags say so) and runs it on a new actix system on this
/// thread until it stops.
pub fn run_with(args: DaemonArgs, launch: Launch) -> Result<Outcome> {
    let node = prepare(args, launch)?;
    actix_web::rt::System::new().block_on(node.run())
}

/// A node whose data directory is ready (made, joined or resumed), not yet
/// running: [`Prepared::run`] runs it on the current actix system. Apart
/// from [`run_with`], so that a launcher can run many nodes on one system
/// (`shoal sim`: each simulated node in a `LocalSet` of its own on a few
/// shared threads).
pub struct Prepared {
    state: state::NodeState,
    fresh_init: bool,
    autolock: bool,
    force_new_cluster: bool,
    data_dir: PathBuf,
    ca: Option<manager::ca::ClusterCa>,
    tls: worker::node::tls::Tls,
    opts: RunOptions,
}

/// The blocking part of [`run_with`]: the data directory, the join (a
/// round trip to a manager), the keys.
pub fn prepare(args: DaemonArgs, launch: Launch) -> Result<Prepared> {
    let addr_pool = AddrPool::new(args.default_addr_pools.clone(), args.default_addr_pool_mask_length)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let existing = load_state(&args.data_dir)?;
    let (state, fresh_init) = match (existing, args.init, &args.join) {
        (Some(s), false, None) => (resume(s, &args)?, false),
        (Some(s), _, _) => bail!(
            "{} already holds node {} ({}) of cluster {}: start without --init/--join to resume it, or use another --data-dir",
            args.data_dir.display(),
            s.node_id,
            s.hostname,
            s.cluster_id
        ),
        (None, true, _) => (init_state(&args)?, true),
        (None, false, Some(join)) => {
            let s = join_cluster(&args, join)?;
            save_state(&args.data_dir, &s)?;
            (s, false)
        }
        (None, false, None) => bail!(
            "no node in {}: start with --init to create a cluster or with --join MANAGER_IP:PORT --token TOKEN to join one",
            args.data_dir.display()
        ),
    };
    if args.force_new_cluster && state.role != Role::Manager {
        bail!(
            "--force-new-cluster needs a manager's data directory; {} holds worker {}",
            args.data_dir.display(),
            state.hostname
        );
    }
    check_api_addr(state.api_addr, args.api_tls).map_err(|e| anyhow!(e))?;
    let mut state = state;
    let serve_at = api_addr_for(state.api_addr, args.api_tls, state.role);
    if serve_at != state.api_addr {
        tracing::warn!(api = %serve_at, "--api-tls is for managers: this worker serves its API on loopback");
        state.api_addr = serve_at;
    }
    if state.role == Role::Worker {
        // A demoted manager's raft log is stale: were it promoted again, it
        // must start from what the leader sends, not from old votes.
        let dir = raft_dir(&args.data_dir);
        if dir.exists() {
            tracing::info!(dir = %dir.display(), "removing the raft log of a former manager");
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    // The CA exists outside the store only until the first manager has
    // committed it there.
    let cert_expiry = args.cert_expiry.or(args.test_cert_expiry_secs).unwrap_or(worker::node::tls::DEFAULT_CERT_EXPIRY);
    let ca = if fresh_init { Some(init_identity(&args.data_dir, &state, cert_expiry)?) } else { None };
    let storage_key = gossip::storage_key(&args.data_dir)?;
    if fresh_init {
        gossip::save(&args.data_dir, &storage_key, &common::gossip_key::GossipKeyRing::first())?;
    }
    let gossip_keys = gossip::load(&args.data_dir, &storage_key);
    let tls = load_tls(&args.data_dir, &state)?;
    let data_dir = args.data_dir.clone();
    let opts = RunOptions {
        data_key: None,
        snapshot_interval: args.snapshot_interval,
        storage_quota: args.storage_quota,
        mesh: args.mesh.0,
        open_files: raise_open_file_limit(),
        docker_socket: args.docker_socket.clone(),
        describe: args.describe.clone(),
        gossip_keys,
        api_tls: args.api_tls,
        api_max_connections: args.api_max_connections,
        addr_pool,
        cert_expiry,
        launch,
    };
    Ok(Prepared {
        state,
        fresh_init,
        autolock: args.autolock,
        force_new_cluster: args.force_new_cluster,
        data_dir,
        ca,
        tls,
        opts,
    })
}

impl Prepared {
    /// Runs the node until it stops (its shutdown future, or a change of
    /// role); needs an actix system on this thread.
    pub async fn run(self) -> Result<Outcome> {
        let Prepared { state, fresh_init, autolock, force_new_cluster, data_dir, ca, tls, mut opts } = self;
        if state.role == Role::Manager {
            // A locked manager has no CA to serve TLS with: it takes the
            // unlock key on loopback only when its API needs TLS.
            let locked_addr = match needs_tls(state.api_addr) {
                true => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, state.api_addr.port())),
                false => state.api_addr,
            };
            let key = keys::data_key(&data_dir, locked_addr, fresh_init && autolock).await?;
            if force_new_cluster {
                force_new_cluster_at(&data_dir, key.clone(), &state)?;
            }
            opts.data_key = Some(key);
        }
        run_node(state, data_dir, ca, tls, opts).await
    }
}

/// Refuses an API anyone could reach without a client certificate.
fn check_api_addr(addr: SocketAddr, tls: bool) -> std::result::Result<(), String> {
    if needs_tls(addr) && !tls {
        return Err(format!(
            "the API on {addr} is not on loopback, so anyone who reaches it would own the cluster: serve it over \
             TLS with client certificates with `shoal daemon --api-addr {addr} --api-tls`, and give clients a \
             bundle from `shoal cert issue --name NAME --output DIR` (the first admin's is in DATA_DIR/api-client)"
        ));
    }
    Ok(())
}

/// Where a node serves its API: a worker has no TLS for it (the API's
/// certificate is signed by the cluster CA, which only managers hold), so
/// with `--api-tls` (a demoted manager restarting with its flags) it serves
/// on loopback, on the same port.
fn api_addr_for(addr: SocketAddr, tls: bool, role: Role) -> SocketAddr {
    match (role, tls) {
        (Role::Worker, true) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

fn force_new_cluster_at(data_dir: &std::path::Path, key: DataKey, state: &state::NodeState) -> Result<()> {
    let r = manager::raft::recover::force_new_cluster(&raft_dir(data_dir), key, state.raft_id, &state.node_id)
        .map_err(|e| anyhow!("--force-new-cluster: {e}"))?;
    tracing::warn!(
        index = r.index,
        services = r.services,
        demoted = ?r.demoted,
        "forced a new cluster with this manager as its only manager"
    );
    eprintln!(
        "Forced a new cluster from log index {} with {} service(s); former managers now workers: {}.",
        r.index,
        r.services,
        if r.demoted.is_empty() { "none".to_string() } else { r.demoted.join(", ") }
    );
    Ok(())
}

/// Raises this process's soft limit on open files to its hard limit, as
/// servers do (every cluster-port connection is a file; the soft limit is
/// often 1024); returns the limit now in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the open-file limit");
            hard
        }
        Err(e) => {
            tracing::warn!(limit = soft, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{api_addr_for, check_api_addr, parse_cert_expiry, parse_size, parse_test_cert_expiry};
    use common::node::Role;

    #[test]
    fn an_api_off_loopback_needs_tls_and_a_worker_keeps_it_on_loopback() {
        let addr = |a: &str| a.parse().unwrap();
        assert_eq!(check_api_addr(addr("127.0.0.1:4243"), false), Ok(()));
        assert_eq!(check_api_addr(addr("127.0.5.2:4243"), true), Ok(()), "TLS on loopback too");
        assert_eq!(check_api_addr(addr("0.0.0.0:4243"), true), Ok(()));
        assert_eq!(
            check_api_addr(addr("0.0.0.0:4243"), false),
            Err("the API on 0.0.0.0:4243 is not on loopback, so anyone who reaches it would own the cluster: serve \
                 it over TLS with client certificates with `shoal daemon --api-addr 0.0.0.0:4243 --api-tls`, and \
                 give clients a bundle from `shoal cert issue --name NAME --output DIR` (the first admin's is \
                 in DATA_DIR/api-client)"
                .to_string())
        );
        assert_eq!(api_addr_for(addr("10.0.0.1:4243"), true, Role::Worker), addr("127.0.0.1:4243"));
        assert_eq!(api_addr_for(addr("10.0.0.1:4243"), true, Role::Manager), addr("10.0.0.1:4243"));
        assert_eq!(api_addr_for(addr("127.0.0.1:5000"), false, Role::Worker), addr("127.0.0.1:5000"));
    }

    #[test]
    fn cert_expiry_takes_go_durations_of_an_hour_or_more() {
        use std::time::Duration;
        assert_eq!(parse_cert_expiry("2160h0m0s"), Ok(Duration::from_secs(90 * 24 * 3600)));
        assert_eq!(parse_cert_expiry("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_cert_expiry("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_cert_expiry("10m"), Err("the certificate expiry must be at least 1h (got 10m)".into()));
        assert_eq!(parse_cert_expiry("59m59s").map_err(|_| ()), Err(()));
        assert_eq!(parse_cert_expiry("soon"), Err("time: invalid duration \"soon\"".into()));
        assert!(parse_cert_expiry("-1h").is_err());
        assert_eq!(parse_test_cert_expiry("30"), Ok(Duration::from_secs(30)));
        assert!(parse_test_cert_expiry("9").is_err());
        assert!(parse_test_cert_expiry("1h").is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert_eq!(parse_size("MiB"), Err("invalid size \"MiB\": expected a number, e.g. 64MiB".to_string()));
        assert_eq!(
            parse_size("3 parsecs"),
            Err("invalid size \"3 parsecs\": unknown unit \"parsecs\" (use k, M, G or T)".to_string())
        );
        assert!(parse_size("99999999999T").is_err());
    }
}

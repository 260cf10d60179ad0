//! What a node keeps in its data directory between restarts: `node.json`
//! ([`NodeState`]), the TLS identity under `tls/`, the raft log under `raft/`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use common::node::Role;
use common::wire::PeerInfo;
use common::NodeId;
use manager::ca::ClusterCa;
use serde::{Deserialize, Serialize};
use worker::node::tls::{NodeIdentity, Tls};

use super::{DaemonArgs, DEFAULT_API, DEFAULT_PORT};

/// What a node remembers about itself between restarts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    pub node_id: NodeId,
    pub raft_id: u64,
    pub role: Role,
    pub cluster_id: String,
    pub advertise_addr: IpAddr,
    pub port: u16,
    pub api_addr: SocketAddr,
    pub hostname: String,
    /// The managers (raft ids and cluster addresses), refreshed from the leader.
    #[serde(default)]
    pub managers: Vec<PeerInfo>,
}

impl NodeState {
    pub(crate) fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise_addr, self.port)
    }
}

pub(crate) fn raft_dir(dir: &Path) -> PathBuf {
    dir.join("raft")
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("node.json")
}

pub(crate) fn load_state(dir: &Path) -> Result<Option<NodeState>> {
    let p = state_path(dir);
    match std::fs::read(&p) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", p.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Written to a temporary file, synced, then renamed: never half a file.
pub(crate) fn save_state(dir: &Path, s: &NodeState) -> Result<()> {
    use std::io::Write;
    let p = state_path(dir);
    let tmp = dir.join("node.json.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(s)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(crate) fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

/// The first manager makes the cluster CA and certifies itself with it.
pub(crate) fn init_identity(dir: &Path, state: &NodeState, lifetime: std::time::Duration) -> Result<ClusterCa> {
    let ca = ClusterCa::generate(&state.cluster_id)?;
    ca.issue(&state.node_id, state.role, lifetime)?.save(&tls_dir(dir))?;
    Ok(ca)
}

/// This node's TLS side, from what init or join saved.
pub(crate) fn load_tls(dir: &Path, state: &NodeState) -> Result<Tls> {
    let tls = tls_dir(dir);
    let identity = NodeIdentity::load(&tls)?.ok_or_else(|| {
        anyhow!(
            "{} holds no certificate for node {}: a node made before the cluster port used TLS cannot rejoin; \
             start it afresh (another --data-dir) with --init or --join",
            tls.display(),
            state.node_id
        )
    })?;
    let me = identity.peer()?;
    if me.node_id != state.node_id {
        bail!("{} holds the certificate of node {}, not of this node ({})", tls.display(), me.node_id, state.node_id);
    }
    Ok(Tls::new(&identity)?)
}

pub(crate) fn machine_hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

fn secret(n: usize) -> String {
    let id = format!("{}{}", common::ServiceId::random(), common::ServiceId::random());
    id[..n].to_string()
}

pub(crate) fn resume(mut s: NodeState, args: &DaemonArgs) -> Result<NodeState> {
    if let Some(a) = args.advertise_addr {
        if a != s.advertise_addr {
            bail!("this node was registered with advertise address {}; it cannot change to {a}", s.advertise_addr);
        }
    }
    if let Some(p) = args.port {
        if p != s.port {
            bail!("this node was registered with cluster port {}; it cannot change to {p}", s.port);
        }
    }
    let mut changed = false;
    if let Some(a) = args.api_addr {
        changed |= s.api_addr != a;
        s.api_addr = a;
    }
    if changed {
        save_state(&args.data_dir, &s)?;
    }
    Ok(s)
}

pub(crate) fn init_state(args: &DaemonArgs) -> Result<NodeState> {
    let advertise = args.advertise_addr.ok_or_else(|| anyhow!("--init needs --advertise-addr IP"))?;
    Ok(NodeState {
        node_id: NodeId::random(),
        raft_id: manager::join::new_raft_id(),
        role: Role::Manager,
        cluster_id: secret(25),
        advertise_addr: advertise,
        port: args.port.unwrap_or(DEFAULT_PORT),
        api_addr: args.api_addr.unwrap_or_else(|| DEFAULT_API.parse().expect("default API address")),
        hostname: args.hostname.clone().unwrap_or_else(machine_hostname),
        managers: vec![],
    })
}

fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked.json")
}

/// The nodes removed from the cluster as this node last heard (empty if it
/// never did, or if the file cannot be read: the next session resends it).
pub(crate) fn load_revoked(dir: &Path) -> std::collections::BTreeSet<NodeId> {
    let path = revoked_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot parse the removed nodes; the leader resends them");
            Default::default()
        }),
        Err(_) => Default::default(),
    }
}

pub(crate) fn save_revoked(dir: &Path, nodes: &std::collections::BTreeSet<NodeId>) -> Result<()> {
    let path = revoked_path(dir);
    let tmp = dir.join("revoked.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(nodes)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

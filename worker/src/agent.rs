//! The node's session with the leader's dispatcher: find the leader among
//! the known managers (following redirects), receive assignments, send
//! status reports, reconnect when the leader goes quiet or changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::backoff::Backoff;
use common::mesh::{MeshFailure, MeshTable};
use common::sched::NodeDescription;
use common::secret::FileData;
use common::task::{Task, TaskStatusUpdate};
use common::wire::{Frame, Hello, PeerInfo};
use common::{NodeId, TaskId};
use futures::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};

use crate::node::net::{self, NetError};
use crate::node::tls::Tls;

/// How often the leader sends each session a heartbeat (each session at
/// its own phase, each period drawn within [`HEARTBEAT_JITTER`] of this),
/// which the node answers. Swarmkit's default dispatcher heartbeat period.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A heartbeat period is drawn from `HEARTBEAT ± HEARTBEAT_JITTER`, so
/// that sessions opened together do not beat together.
pub const HEARTBEAT_JITTER: Duration = Duration::from_millis(500);
/// No frame from the other end for this long (three heartbeat periods, as
/// swarmkit's grace multiplier; a heartbeat is at most
/// `HEARTBEAT + HEARTBEAT_JITTER` from the last): the session is dead.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());
/// Between rounds of dialling the managers when none took the session.
const RECONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// What the agent does with what arrives.
pub trait AgentSink: Send + Sync + 'static {
    fn assign(&self, full: bool, tasks: Vec<Task>, removed: Vec<TaskId>);
    fn managers(&self, managers: Vec<PeerInfo>);
    /// The routing mesh as the leader computed it.
    fn mesh(&self, table: MeshTable);
    /// The values of the secrets and configs this node's tasks use.
    fn files(&self, _files: Vec<FileData>) {}
    /// The keys that seal gossip.
    fn gossip_keys(&self, _ring: common::gossip_key::GossipKeyRing) {}
    /// The nodes removed from the cluster, whose certificates are refused.
    fn revoked(&self, _nodes: std::collections::BTreeSet<NodeId>) {}
}

pub struct Agent {
    pub node_id: NodeId,
    /// Known managers' cluster addresses, freshest first.
    pub managers: Arc<RwLock<Vec<SocketAddr>>>,
    pub tls: Tls,
    /// What this node offers, told to each leader as a session opens.
    pub description: NodeDescription,
}

/// The managers in the order to dial them: as known, but `last` at the end.
fn dial_order(managers: &[SocketAddr], last: Option<SocketAddr>) -> Vec<SocketAddr> {
    let (mut rest, at_end): (Vec<SocketAddr>, Vec<SocketAddr>) = managers.iter().partition(|a| Some(**a) != last);
    rest.extend(at_end);
    rest
}

impl Agent {
    /// Runs forever: sessions, one after the other.
    pub async fn run(
        self,
        sink: Arc<dyn AgentSink>,
        mut reports: mpsc::UnboundedReceiver<TaskStatusUpdate>,
        mut mesh_status: watch::Receiver<Vec<MeshFailure>>,
    ) {
        let mut next: Option<SocketAddr> = None;
        // The manager whose session just ended is dialled last: it may be
        // cut off (its address then takes a whole handshake timeout), and
        // if it still leads, the others redirect to it.
        let mut ended: Option<SocketAddr> = None;
        let mut retries = RECONNECT_BACKOFF.retries();
        loop {
            let candidates: Vec<SocketAddr> = match next.take() {
                Some(a) => vec![a],
                None => dial_order(&self.managers.read(), ended.take()),
            };
            let mut progressed = false;
            for addr in candidates {
                match net::dial(&self.tls, addr, Hello::Session { node_id: self.node_id.clone() }).await {
                    Ok((conn, Frame::Welcome)) => {
                        tracing::info!(manager = %addr, "session with the leader opened");
                        retries.reset();
                        let r = self.session(conn, &sink, &mut reports, &mut mesh_status).await;
                        tracing::warn!(manager = %addr, result = ?r.err(), "session with the leader ended");
                        ended = Some(addr);
                        progressed = true;
                        break;
                    }
                    Ok((_, Frame::Redirect { leader: Some(leader) })) if leader != addr => {
                        next = Some(leader);
                        progressed = true;
                        break;
                    }
                    Ok((_, other)) => {
                        tracing::debug!(manager = %addr, answer = ?other, "manager cannot take the session now");
                    }
                    Err(NetError::Refused(reason)) => {
                        tracing::error!(manager = %addr, %reason, "session refused");
                    }
                    Err(e) => tracing::debug!(manager = %addr, error = %e, "manager unreachable"),
                }
            }
            if !progressed {
                tokio::time::sleep(retries.next_delay()).await;
            }
        }
    }

    async fn session(
        &self,
        conn: net::Conn,
        sink: &Arc<dyn AgentSink>,
        reports: &mut mpsc::UnboundedReceiver<TaskStatusUpdate>,
        mesh_status: &mut watch::Receiver<Vec<MeshFailure>>,
    ) -> Result<(), NetError> {
        let (mut tx, mut rx) = conn.split();
        tx.send(Frame::Description(self.description.clone())).await?;
        // Each new leader hears what this node cannot serve.
        let now = mesh_status.borrow_and_update().clone();
        if !now.is_empty() {
            tx.send(Frame::MeshStatus(now)).await?;
        }
        loop {
            tokio::select! {
                frame = tokio::time::timeout(SESSION_TIMEOUT, rx.next()) => {
                    let frame = frame.map_err(|_| NetError::Timeout)?.ok_or(NetError::Closed)??;
                    match frame {
                        Frame::Assignments { full, tasks, removed, managers } => {
                            if !managers.is_empty() {
                                let addrs: Vec<SocketAddr> = managers.iter().map(|m| m.addr).collect();
                                *self.managers.write() = addrs;
                                sink.managers(managers);
                            }
                            sink.assign(full, tasks, removed);
                        }
                        Frame::Mesh(table) => sink.mesh(table),
                        Frame::Files(files) => sink.files(files),
                        Frame::GossipKeys(ring) => sink.gossip_keys(ring),
                        Frame::Revoked(nodes) => sink.revoked(nodes),
                        Frame::Heartbeat => tx.send(Frame::Heartbeat).await?,
                        other => tracing::debug!(frame = ?other, "unexpected frame in session"),
                    }
                }
                changed = mesh_status.changed() => {
                    if changed.is_ok() {
                        let now = mesh_status.borrow_and_update().clone();
                        tx.send(Frame::MeshStatus(now)).await?;
                    } else {
                        // The mesh programmer is gone; nothing more to report.
                        std::future::pending::<()>().await;
                    }
                }
                report = reports.recv() => {
                    let Some(first) = report else { return Ok(()) };
                    let mut batch = vec![first];
                    while let Ok(more) = reports.try_recv() {
                        batch.push(more);
                        if batch.len() >= 1000 {
                            break;
                        }
                    }
                    // Not sent: the supervisor re-reports from the next
                    // full assignment set, which shows the stale state.
                    tx.send(Frame::Status(batch.clone())).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_whose_session_ended_is_dialled_last() {
        let [a, b, c]: [SocketAddr; 3] =
            ["10.0.0.1:4242", "10.0.0.2:4242", "10.0.0.3:4242"].map(|s| s.parse().unwrap());
        assert_eq!(dial_order(&[a, b, c], Some(a)), vec![b, c, a]);
        assert_eq!(dial_order(&[a, b, c], Some(b)), vec![a, c, b]);
        assert_eq!(dial_order(&[a, b, c], None), vec![a, b, c]);
        assert_eq!(dial_order(&[a, b], Some(c)), vec![a, b], "one no longer a manager is not dialled");
    }
}

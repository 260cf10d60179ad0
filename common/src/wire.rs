//! Frames on the cluster port, and their codec.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! MessagePack (rmp-serde, with field names so that fields can be added).
//! A frame larger than [`MAX_FRAME`] or one that does not decode is an error
//! for that connection only: the caller closes it.
//!
//! Every connection begins with a [`Hello`] from the side that dialled; the
//! other side answers [`Frame::Welcome`], [`Frame::JoinAccepted`],
//! [`Frame::Redirect`] or [`Frame::Refused`]. The frames travel inside
//! mutual TLS (`worker::node::tls`); a joining node, which has no certificate yet,
//! sends a CSR in its hello and gets its certificate in [`JoinAccepted`].

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::gossip_key::GossipKeyRing;
use crate::ids::{NodeId, TaskId};
use crate::mesh::{MeshFailure, MeshTable};
use crate::node::Role;
use crate::sched::NodeDescription;
use crate::secret::FileData;
use crate::task::{Task, TaskStatusUpdate};

/// Hard limit on one frame (raft snapshots of the store travel in one frame).
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// Bumped when a change makes old and new nodes unable to talk
/// (2: the cluster port is TLS; joins carry a CSR).
pub const PROTOCOL_VERSION: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Hello {
    /// A new node asks to join with a worker or manager token.
    Join {
        token: String,
        hostname: String,
        advertise_addr: SocketAddr,
        protocol: u32,
        /// PKCS#10 request (DER) for the node's certificate; its key stays
        /// on the node.
        #[serde(default, with = "serde_bytes")]
        csr: Vec<u8>,
    },
    /// A manager opens its stream of raft messages to another manager.
    Raft { from: NodeId, raft_id: u64 },
    /// A node opens its session with the leader's dispatcher.
    Session { node_id: NodeId },
    /// A manager asks a node for the logs of some of its tasks.
    Logs(LogRequest),
    /// A node whose role changed asks for a certificate for its new role
    /// (signed from this CSR, with the role the store gives it).
    Renew {
        node_id: NodeId,
        #[serde(with = "serde_bytes")]
        csr: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub raft_id: u64,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub node_id: NodeId,
    pub raft_id: u64,
    pub role: Role,
    pub cluster_id: String,
    /// Managers known at join time; the node keeps this list fresh from
    /// later sessions.
    pub managers: Vec<PeerInfo>,
    /// The node's certificate, signed from its CSR, and the cluster CA's (PEM).
    #[serde(default)]
    pub certificate: String,
    #[serde(default)]
    pub ca_certificate: String,
    /// The keys that seal gossip (see [`crate::gossip_key`]).
    #[serde(default)]
    pub gossip_keys: GossipKeyRing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub tasks: Vec<TaskId>,
    pub follow: bool,
    /// Last N lines of each task; `None` for all.
    pub tail: Option<u64>,
    /// Also every container of this service the node still has, tasks
    /// removed or replaced included (kept for their logs: `--log-retention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::ids::ServiceId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub task_id: TaskId,
    /// The task's slot, from its container (for a task the manager no
    /// longer has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// RFC 3339 with nanoseconds, as Docker stamps it.
    pub timestamp: String,
    pub line: String,
    /// The stream the container wrote the line to (stdout when an older
    /// node does not say).
    #[serde(default, skip_serializing_if = "OutputStream::is_stdout")]
    pub stream: OutputStream,
}

/// Which of a container's output streams a log line came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    #[default]
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn is_stdout(&self) -> bool {
        *self == OutputStream::Stdout
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// The hello was accepted; the stream goes on.
    Welcome,
    JoinAccepted(JoinAccepted),
    /// Not the leader: try this address.
    Redirect {
        leader: Option<SocketAddr>,
    },
    /// The hello was refused; the connection closes after this frame.
    Refused {
        reason: String,
    },
    /// A raft-rs message (protobuf bytes).
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Dispatcher → node: `full` replaces the node's whole assignment set;
    /// otherwise `tasks` are upserted and `removed` dropped.
    Assignments {
        full: bool,
        tasks: Vec<Task>,
        removed: Vec<TaskId>,
        managers: Vec<PeerInfo>,
    },
    /// Node → dispatcher: task status changes.
    Status(Vec<TaskStatusUpdate>),
    LogLine(LogLine),
    LogEnd {
        error: Option<String>,
    },
    Heartbeat,
    /// Dispatcher → node: the whole routing mesh, sent whenever it changes
    /// (before the assignments that stop tasks, so a task leaves the
    /// rotation before it is stopped).
    Mesh(MeshTable),
    /// Node → dispatcher: the published ports this node cannot serve (the
    /// whole list, sent when it changes).
    MeshStatus(Vec<MeshFailure>),
    /// Manager → node: the certificate a `Renew` asked for, and the CA's (PEM).
    Certificate {
        certificate: String,
        ca_certificate: String,
    },
    /// Dispatcher → node: the values of every secret and config the node's
    /// assigned tasks use — the whole set, sent whenever it changes and
    /// before the assignments that need it. Never sent to a node whose
    /// tasks use none.
    Files(Vec<FileData>),
    /// Node → dispatcher, first on each session and whenever it changes:
    /// what the node offers (capacity, platform, engine labels).
    Description(NodeDescription),
    /// Dispatcher → node, first on each session and whenever it changes:
    /// the keys that seal gossip.
    GossipKeys(GossipKeyRing),
    /// Dispatcher → node, whenever it changes (and first on each session
    /// once any node was removed): the nodes removed from the cluster. Every
    /// node refuses a connection made with one of their certificates.
    Revoked(std::collections::BTreeSet<NodeId>),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let body = rmp_serde::to_vec_named(frame).map_err(|e| WireError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Takes one whole frame off the front of `buf`, if one is there. Rejects an
/// oversized length as soon as the 4-byte prefix arrives, before buffering.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    rmp_serde::from_slice(&body).map(Some).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello::Join {
                token: "SWMTKN-x".into(),
                hostname: "node1".into(),
                advertise_addr: "127.0.0.11:4242".parse().unwrap(),
                protocol: PROTOCOL_VERSION,
                csr: vec![0x30, 0x82],
            }),
            Frame::Raft(vec![1, 2, 3, 255]),
            Frame::Refused { reason: "invalid join token".into() },
            Frame::Status(vec![]),
            Frame::Heartbeat,
        ]
    }

    #[test]
    fn round_trips_split_anywhere() {
        let mut wire = Vec::new();
        for f in sample() {
            wire.extend(encode(&f).unwrap());
        }
        // Feed the bytes one at a time: frames come out whole, in order.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, sample());
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_FRAME + 1) as u32);
        assert!(matches!(decode(&mut buf), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut buf = BytesMut::new();
        buf.put_u32(5);
        buf.extend_from_slice(&[0xc1, 0xff, 0x00, 0x13, 0x37]);
        assert!(matches!(decode(&mut buf), Err(WireError::Malformed(_))));
    }

    /// A log line from a node that does not send the stream is stdout; a
    /// stderr line decodes on a node that does not know the field.
    #[test]
    fn log_lines_keep_their_stream_and_older_nodes_still_understand_them() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct OldLogLine {
            task_id: TaskId,
            timestamp: String,
            line: String,
        }
        let old = OldLogLine { task_id: "t1".into(), timestamp: "ts".into(), line: "hello".into() };
        let new: LogLine = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!(new.stream, OutputStream::Stdout);
        let err = LogLine { stream: OutputStream::Stderr, ..new };
        let bytes = rmp_serde::to_vec_named(&err).unwrap();
        assert_eq!(rmp_serde::from_slice::<LogLine>(&bytes).unwrap(), err);
        assert_eq!(rmp_serde::from_slice::<OldLogLine>(&bytes).unwrap(), old);
    }

    #[test]
    fn raft_bytes_are_compact() {
        let f = Frame::Raft(vec![7u8; 1000]);
        assert!(encode(&f).unwrap().len() < 1100);
    }
}

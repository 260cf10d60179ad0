//! A node's session connection, served on the leader: the answer to its
//! hello (`Redirect` to the leader, `Refused` for a node the store does not
//! know, `Welcome`), then frames from the [`Dispatcher`] written out and the
//! node's status and mesh reports fed in, until either side ends it. The
//! writer sends a heartbeat every [`HEARTBEAT`] (each session at a random
//! phase, each period jittered, so thousands of sessions do not beat at
//! once); a node answers each, so a session silent for [`SESSION_TIMEOUT`]
//! (three periods) is over (a node cut off without a word); every frame
//! from the node is noted in [`Heard`].

use actix::Addr;
use common::time::now_ms;
use common::wire::Frame;
use common::NodeId;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use worker::agent::{HEARTBEAT, HEARTBEAT_JITTER, SESSION_TIMEOUT};
use worker::node::net;

use super::{
    next_session_id, Described, Dispatcher, Heard, MeshReport, Register, Reports, Unregister, SESSION_QUEUE,
    SESSION_WRITE_TIMEOUT,
};
use crate::raft::{RaftStatus, SharedStore};

/// Serves `node`'s session on `conn` until it ends; the session is
/// registered with `dispatcher` for as long as it lasts.
pub async fn serve(
    mut conn: net::Conn,
    node: NodeId,
    dispatcher: &Addr<Dispatcher>,
    heard: &Heard,
    store: &SharedStore,
    status: &watch::Receiver<RaftStatus>,
) -> Result<(), net::NetError> {
    if !status.borrow().is_leader {
        let leader = store.read().addr_of_raft_id(status.borrow().leader_id);
        return net::send(&mut conn, Frame::Redirect { leader }).await;
    }
    if !store.read().nodes.contains_key(&node) {
        let reason = format!("node {node} is not part of this cluster (was it removed?)");
        return net::send(&mut conn, Frame::Refused { reason }).await;
    }
    net::send(&mut conn, Frame::Welcome).await?;
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let session = next_session_id();
    dispatcher.do_send(Register { node: node.clone(), session, tx });
    let (mut sink, mut stream) = conn.split();
    let writer = async {
        // The first beat at a random point of the first period.
        let mut beat = Instant::now() + HEARTBEAT.mul_f64(rand::random::<f64>());
        loop {
            let f = tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
                _ = tokio::time::sleep_until(beat) => {
                    beat = Instant::now() + heartbeat_period(rand::random());
                    Frame::Heartbeat
                }
            };
            // The dispatcher dropped the session (it fell behind, or
            // this manager stopped leading): end it now rather than
            // write out what is queued; the node reconnects and
            // starts again from its full set.
            if rx.is_closed() {
                tracing::debug!(%node, session, "session dropped by the dispatcher");
                return Ok(());
            }
            // A node that stopped reading (or vanished without a word)
            // does not hold its connection for ever.
            tokio::time::timeout(SESSION_WRITE_TIMEOUT, sink.send(f)).await.map_err(|_| net::NetError::Timeout)??;
        }
        Ok::<(), net::NetError>(())
    };
    // Reports wait for the dispatcher to take them: a node sending
    // faster than it handles them is slowed down by TCP, not queued for.
    let reader = async {
        loop {
            let frame =
                tokio::time::timeout(SESSION_TIMEOUT, stream.next()).await.map_err(|_| net::NetError::Timeout)?;
            let Some(frame) = frame else { break };
            let frame = frame?;
            heard.note(&node, now_ms());
            let taken = match frame {
                Frame::Status(updates) => dispatcher.send(Reports { node: node.clone(), updates }).await,
                Frame::MeshStatus(failures) => dispatcher.send(MeshReport { node: node.clone(), failures }).await,
                Frame::Description(description) => dispatcher.send(Described { node: node.clone(), description }).await,
                Frame::Heartbeat => Ok(()),
                other => {
                    return Err(net::NetError::Unexpected(format!("{other:?}").chars().take(60).collect()));
                }
            };
            taken.map_err(|_| net::NetError::Closed)?;
        }
        Ok(())
    };
    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    dispatcher.do_send(Unregister { node, session });
    result
}

/// One heartbeat period: [`HEARTBEAT`] ± [`HEARTBEAT_JITTER`], `r` in [0, 1).
pub fn heartbeat_period(r: f64) -> Duration {
    (HEARTBEAT - HEARTBEAT_JITTER) + (2 * HEARTBEAT_JITTER).mul_f64(r.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_periods_stay_within_the_jitter_and_well_inside_the_timeout() {
        assert_eq!(heartbeat_period(0.0), Duration::from_millis(4_500));
        assert_eq!(heartbeat_period(0.5), Duration::from_secs(5));
        assert_eq!(heartbeat_period(1.0), Duration::from_millis(5_500));
        assert!(SESSION_TIMEOUT >= 2 * heartbeat_period(1.0), "two beats may go missing");
    }
}

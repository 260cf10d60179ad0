//! `--join`: asks a manager to admit this node, checking the manager's CA
//! against the token before the token is sent.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use common::wire::{Frame, Hello, PROTOCOL_VERSION};
use worker::node::net;
use worker::node::tls::{CertificateRequest, JoinToken};

use super::state::{machine_hostname, tls_dir, NodeState};
use super::{DaemonArgs, DEFAULT_API, DEFAULT_PORT};

pub(crate) fn join_cluster(args: &DaemonArgs, target: &str) -> Result<NodeState> {
    let advertise = args.advertise_addr.ok_or_else(|| anyhow!("--join needs --advertise-addr IP"))?;
    let token = args.token.clone().ok_or_else(|| anyhow!("--join needs --token TOKEN"))?;
    // A malformed token is refused here: its CA fingerprint is what lets
    // this node check the manager before sending the token.
    let pinned: JoinToken = token.parse()?;
    let target: SocketAddr = match target.parse() {
        Ok(a) => a,
        Err(_) => {
            let ip: IpAddr =
                target.parse().map_err(|_| anyhow!("invalid --join address {target:?}: expected MANAGER_IP:PORT"))?;
            SocketAddr::new(ip, DEFAULT_PORT)
        }
    };
    let port = args.port.unwrap_or(DEFAULT_PORT);
    let hostname = args.hostname.clone().unwrap_or_else(machine_hostname);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let request = CertificateRequest::new()?;
    let hello = Hello::Join {
        token,
        hostname: hostname.clone(),
        advertise_addr: SocketAddr::new(advertise, port),
        protocol: PROTOCOL_VERSION,
        csr: request.csr_der().to_vec(),
    };
    // A manager that is busy (its handshake queue full: it closes the
    // oldest) or restarting resets or refuses the connection before it read
    // the hello: try again, a little later each time, within the 30 s. A
    // refusal (a bad token, say) or a TLS failure is final.
    let answer = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut pause = Duration::from_millis(200);
            loop {
                match net::dial_join(target, pinned.ca, hello.clone(), Duration::from_secs(30)).await {
                    Ok((_conn, answer)) => return Ok::<_, net::NetError>(answer),
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(%target, error = %e, retry_in_ms = pause.as_millis() as u64, "join: no answer yet; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(3));
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
    });
    let accepted = match answer {
        Ok(Ok(Frame::JoinAccepted(a))) => a,
        Ok(Ok(other)) => bail!("unexpected answer from {target}: {other:?}"),
        Ok(Err(net::NetError::Refused(reason))) => bail!("join refused by {target}: {reason}"),
        Ok(Err(e)) => bail!("cannot join through {target}: {e}"),
        Err(_) => bail!("cannot join through {target}: no answer within 30 s"),
    };
    let identity = request
        .complete(accepted.certificate.clone(), accepted.ca_certificate.clone(), Some(pinned.ca))
        .with_context(|| format!("join through {target}: the certificate it issued is unusable"))?;
    identity.save(&tls_dir(&args.data_dir))?;
    super::gossip::save(&args.data_dir, &identity.storage_key(), &accepted.gossip_keys)?;
    Ok(NodeState {
        node_id: accepted.node_id,
        raft_id: accepted.raft_id,
        role: accepted.role,
        cluster_id: accepted.cluster_id,
        advertise_addr: advertise,
        port,
        api_addr: args.api_addr.unwrap_or_else(|| DEFAULT_API.parse().expect("default API address")),
        hostname,
        managers: accepted.managers,
    })
}

//! Renewal of the node's certificate while it runs: at 2/3 of its lifetime
//! (see `worker::node::tls::renewal_time`) the node makes a new key, has a
//! manager sign its CSR over the cluster port (the current certificate
//! proves who asks; the manager gives the role the store says and refuses
//! removed nodes), saves the new identity in `DATA_DIR/tls`, switches its
//! TLS side to it for new connections (open ones carry on) and seals its
//! copy of the gossip keys again with the key the new identity gives.
//! A failure is retried after 1 s, 2 s, … up to 30 s.
//!
//! On `/metrics`: `shoal_cert_renewals_total{result}` and
//! `shoal_cert_expiry_seconds{cert="node"}`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use common::backoff::Backoff;
use parking_lot::RwLock;
use worker::node::membership::GossipKeys;
use worker::node::tls::{self, NodeIdentity, Tls, Validity};

use super::role::request_certificate;
use super::state::tls_dir;

const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Keeps the node's certificate renewed; never returns (drop it to stop).
pub(crate) async fn keep_renewed(
    tls: Tls,
    data_dir: &Path,
    managers: Arc<RwLock<Vec<SocketAddr>>>,
    gossip_keys: GossipKeys,
) {
    let mut retries = RETRY.retries();
    let mut at = None;
    loop {
        let validity = match Validity::of_pem(&tls.identity().cert_pem) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this node's certificate: it will not be renewed");
                return std::future::pending().await;
            }
        };
        tls::show_expiry("node", &validity);
        let when = at.take().unwrap_or_else(|| validity.renewal_time());
        tokio::time::sleep(when.duration_since(SystemTime::now()).unwrap_or_default()).await;
        let addrs = managers.read().clone();
        match renew_once(&tls, data_dir, &addrs, &gossip_keys).await {
            Ok((renewed, manager)) => {
                retries.reset();
                tls::count_renewal(false, true);
                tracing::info!(
                    %manager,
                    expires = %humantime::format_rfc3339_seconds(renewed.not_after),
                    "renewed this node's certificate"
                );
            }
            Err(e) => {
                tls::count_renewal(false, false);
                let delay = retries.next_delay();
                let left = validity.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                tracing::warn!(error = %e, retry_in = ?delay, expires_in = ?left, "cannot renew this node's certificate");
                at = Some(SystemTime::now() + delay);
            }
        }
    }
}

/// One renewal; the new certificate's validity and the manager that signed it.
async fn renew_once(
    tls: &Tls,
    data_dir: &Path,
    managers: &[SocketAddr],
    gossip_keys: &GossipKeys,
) -> Result<(Validity, SocketAddr)> {
    let current = tls.identity();
    let me = tls.me().clone();
    let (identity, manager) =
        request_certificate(tls, current.ca_fingerprint()?, &me.node_id, me.role, managers).await?;
    let validity = Validity::of_pem(&identity.cert_pem)?;
    identity.save(&tls_dir(data_dir))?;
    tls.renew(&identity)?;
    reseal_gossip_keys(data_dir, &identity, gossip_keys);
    Ok((validity, manager))
}

/// The gossip keys on disk are sealed with a key derived from the node's
/// private key, which just changed.
fn reseal_gossip_keys(data_dir: &Path, identity: &NodeIdentity, gossip_keys: &GossipKeys) {
    if let Err(e) = super::gossip::save(data_dir, &identity.storage_key(), &gossip_keys.get()) {
        tracing::warn!(error = %e, "cannot seal the gossip keys with the renewed key");
    }
}

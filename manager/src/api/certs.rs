//! Certificates of the API: `POST /v1/certs` signs a client's CSR with the
//! cluster CA (`shoal cert issue`), and [`server_tls`] makes this manager's
//! own server side for `--api-tls` (see `worker::node::api_tls`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::{web, HttpResponse};
use common::api::{CertIssued, CertRequest};
use common::backoff::Backoff;
use worker::node::api_tls::{self, ApiRole};
use worker::node::tls::{self, LiveCert, TlsError, Validity};

use super::{manager, ApiState, Error, Result};
use crate::Manager;

pub(super) async fn issue(state: web::Data<ApiState>, body: web::Json<CertRequest>) -> Result<HttpResponse> {
    let m = manager(&state)?;
    let CertRequest { name, role, csr } = body.into_inner();
    let role: ApiRole = role.parse().map_err(Error::BadCertRequest)?;
    let ca = m.store.read().cluster.ca.clone();
    let certificate = api_tls::sign_client_csr(&ca.cert_pem, &ca.key_pem, &csr, &name, role).map_err(|e| match e {
        TlsError::BadRequest(why) => Error::BadCertRequest(why),
        other => Error::Ca(other),
    })?;
    tracing::info!(client = %name, %role, "issued an API client certificate");
    Ok(HttpResponse::Ok().json(CertIssued { certificate, ca_certificate: ca.cert_pem }))
}

/// The API's TLS server side, its certificate naming `ips` and `names` and
/// signed by the CA in the store (which a manager that just joined waits
/// for, up to `within`), valid for the cluster's cert expiry. Run the
/// [`ApiCertRenewal`] beside the server: it replaces the certificate at 2/3
/// of its lifetime, for the handshakes that follow.
pub async fn server_tls(
    m: &Manager,
    ips: &[IpAddr],
    names: &[String],
    within: Duration,
) -> std::result::Result<(rustls::ServerConfig, ApiCertRenewal), TlsError> {
    let mut applied = m.applied.clone();
    let has_ca = |m: &Manager| !m.store.read().cluster.ca.is_empty();
    let waited = tokio::time::timeout(within, async {
        while !has_ca(m) {
            if applied.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if waited.is_err() || !has_ca(m) {
        return Err(TlsError::Config(format!("this manager has not received the cluster CA within {within:?}")));
    }
    let renewal = ApiCertRenewal { ips: ips.to_vec(), names: names.to_vec(), cert: None };
    let (cert_pem, key_pem, validity) = renewal.issue(m)?;
    let ca_pem = m.store.read().cluster.ca.cert_pem.clone();
    let cert = LiveCert::from_pem(&[&cert_pem], &key_pem)?;
    let config = api_tls::server_config(&ca_pem, cert.clone())?;
    Ok((config, ApiCertRenewal { cert: Some((cert, validity)), ..renewal }))
}

/// Renews the API's server certificate while the server runs.
pub struct ApiCertRenewal {
    ips: Vec<IpAddr>,
    names: Vec<String>,
    cert: Option<(Arc<LiveCert>, Validity)>,
}

impl ApiCertRenewal {
    fn issue(&self, m: &Manager) -> std::result::Result<(String, String, Validity), TlsError> {
        let (ca, lifetime) = {
            let s = m.store.read();
            (s.cluster.ca.clone(), s.cluster.cert_expiry())
        };
        let (cert, key) = api_tls::issue_server_cert(&ca.cert_pem, &ca.key_pem, &self.ips, &self.names, lifetime)?;
        let validity = Validity::of_pem(&cert)?;
        tls::show_expiry("api", &validity);
        Ok((cert, key, validity))
    }

    /// At 2/3 of the certificate's lifetime, a new one (a new key, the
    /// store's CA and lifetime); on failure, again after 1 s, 2 s, … 30 s.
    /// Runs until dropped.
    pub async fn run(self, m: Manager) {
        let Some((cert, mut validity)) = self.cert.clone() else { return };
        let mut retries = Backoff::new(Duration::from_secs(1), Duration::from_secs(30)).retries();
        let mut at = validity.renewal_time();
        loop {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            match self.issue(&m).and_then(|(c, k, v)| cert.set(&[&c], &k).map(|()| v)) {
                Ok(v) => {
                    validity = v;
                    retries.reset();
                    at = validity.renewal_time();
                    tls::count_renewal(true, true);
                    tracing::info!(expires = %humantime::format_rfc3339_seconds(validity.not_after), "renewed the API server certificate");
                }
                Err(e) => {
                    tls::count_renewal(true, false);
                    let delay = retries.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot renew the API server certificate");
                    at = SystemTime::now() + delay;
                }
            }
        }
    }
}

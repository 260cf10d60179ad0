//! Certificates of the API: `POST /v1/certs` signs a client's CSR with the
//! cluster CA (`shoal cert issue`), and [`server_tls`] makes this manager's
//! own server side for `--api-tls` (see `worker::node::api_tls`).

use std::net::IpAddr;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use common::api::{CertIssued, CertRequest};
use worker::node::api_tls::{self, ApiRole};
use worker::node::tls::TlsError;

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
/// for, up to `within`).
pub async fn server_tls(
    m: &Manager,
    ips: &[IpAddr],
    names: &[String],
    within: Duration,
) -> std::result::Result<rustls::ServerConfig, TlsError> {
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
    let ca = m.store.read().cluster.ca.clone();
    let (cert, key) = api_tls::issue_server_cert(&ca.cert_pem, &ca.key_pem, ips, names)?;
    api_tls::server_config(&ca.cert_pem, &cert, &key)
}

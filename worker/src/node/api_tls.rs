//! TLS of the HTTP API, for an API off loopback (`shoal daemon --api-tls`):
//! what its certificates say and the rustls configurations built from them.
//!
//! - A client certificate (`shoal cert issue`) is signed by the cluster CA
//!   from the client's CSR (its key stays with the client): CN = the name
//!   given, O = [`CLIENT_ORG`], OU = its [`ApiRole`], client usage only. The
//!   cluster port takes none of them (their OU is no node role), and the
//!   API takes no node certificate ([`client_role`] is `None` for one).
//! - The API's server certificate is made by a manager at start, signed by
//!   the CA in the store, and names the addresses clients reach it at (the
//!   docker CLI checks the IP it dials).
//! - The server asks every client for a certificate and refuses the
//!   handshake without one the cluster CA signed ([`server_config`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use time::{Duration, OffsetDateTime};

use super::tls::{cert_from_pem, config_err, gen_err, provider, random_serial, validity_from, LiveCert, TlsError};

/// The organisation of every API client certificate.
pub const CLIENT_ORG: &str = "shoal API client";
/// How long a client certificate is valid.
const CLIENT_VALIDITY: Duration = Duration::days(90);

/// What a client certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApiRole {
    /// Everything.
    #[default]
    Admin,
    /// Reads only: any method but GET and HEAD is refused (403).
    Readonly,
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApiRole::Admin => "admin",
            ApiRole::Readonly => "readonly",
        })
    }
}

impl FromStr for ApiRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(ApiRole::Admin),
            "readonly" => Ok(ApiRole::Readonly),
            other => Err(format!("unknown role {other:?}: admin or readonly")),
        }
    }
}

impl ApiRole {
    /// Whether a request with this method is allowed.
    pub fn allows(self, method: &str) -> bool {
        self == ApiRole::Admin || matches!(method, "GET" | "HEAD")
    }
}

/// Whether the API on `addr` must be TLS with client certificates: anything
/// but a loopback address can be reached by others.
pub fn needs_tls(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// A client's name: what `shoal cert issue --name` takes.
pub fn check_client_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadRequest(format!("invalid client name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ - @")))
    }
}

/// A client's key, made where the client is, and the CSR sent to the manager.
pub struct ClientRequest {
    key: KeyPair,
    csr_pem: String,
}

impl ClientRequest {
    pub fn new() -> Result<ClientRequest, TlsError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let csr = CertificateParams::default().serialize_request(&key).map_err(gen_err)?;
        Ok(ClientRequest { csr_pem: csr.pem().map_err(gen_err)?, key })
    }

    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

fn signed_by_ca(ca_cert_pem: &str, ca_key_pem: &str) -> Result<(Issuer<'static, KeyPair>, OffsetDateTime), TlsError> {
    let ca_der = cert_from_pem(ca_cert_pem)?;
    let key = KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let expires = ca.validity().not_after.to_datetime();
    Ok((Issuer::from_ca_cert_der(&ca_der, key).map_err(gen_err)?, expires))
}

/// Signs a client's CSR (only its public key is used).
pub fn sign_client_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    name: &str,
    role: ApiRole,
) -> Result<String, TlsError> {
    check_client_name(name)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| TlsError::BadRequest(e.to_string()))?;
    let (issuer, ca_expires) = signed_by_ca(ca_cert_pem, ca_key_pem)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationName, CLIENT_ORG);
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.to_string());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::days(1);
    params.not_after = (now + CLIENT_VALIDITY).min(ca_expires);
    params.serial_number = Some(random_serial());
    Ok(params.signed_by(&csr.public_key, &issuer).map_err(gen_err)?.pem())
}

/// The role a verified client certificate gives; `None` for any other
/// certificate the CA signed (a node's).
pub fn client_role(cert_der: &[u8]) -> Option<ApiRole> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let subject = cert.subject();
    let org = subject.iter_organization().next().and_then(|a| a.as_str().ok());
    if org != Some(CLIENT_ORG) {
        return None;
    }
    let role = subject.iter_organizational_unit().next().and_then(|a| a.as_str().ok()).and_then(|ou| ou.parse().ok());
    role
}

/// The name a client certificate gives (CN), for logs.
pub fn client_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// The API's server certificate and key (PEM), signed by the CA, naming
/// `ips` and `names`, valid for `lifetime` (the cluster's cert expiry).
pub fn issue_server_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    ips: &[IpAddr],
    names: &[String],
    lifetime: std::time::Duration,
) -> Result<(String, String), TlsError> {
    let (issuer, ca_expires) = signed_by_ca(ca_cert_pem, ca_key_pem)?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "shoal API");
    params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    for name in names {
        params.subject_alt_names.push(SanType::DnsName(name.as_str().try_into().map_err(gen_err)?));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity_from(OffsetDateTime::now_utc(), lifetime, ca_expires);
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_from_pem(ca_pem)?).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    Ok(Arc::new(roots))
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey(e.to_string()))?;
    Ok((vec![cert_from_pem(cert_pem)?], key))
}

/// The API's server side: TLS 1.2 or 1.3 (the docker CLI speaks both), a
/// client certificate signed by the CA required in the handshake, and the
/// server certificate `cert`, which can be renewed while the server runs.
pub fn server_config(ca_pem: &str, cert: Arc<LiveCert>) -> Result<ServerConfig, TlsError> {
    let clients =
        WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider()).build().map_err(config_err)?;
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(cert))
}

/// A client of the API: trusts `ca_pem`, shows the certificate given.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientConfig, TlsError> {
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(config_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_tls() {
        for (addr, tls) in [
            ("127.0.0.1:4243", false),
            ("127.0.3.7:4243", false),
            ("[::1]:4243", false),
            ("0.0.0.0:4243", true),
            ("[::]:4243", true),
            ("10.0.0.5:4243", true),
            ("192.168.1.2:80", true),
        ] {
            assert_eq!(needs_tls(addr.parse().unwrap()), tls, "{addr}");
        }
    }

    #[test]
    fn a_readonly_role_reads_only() {
        for m in ["GET", "HEAD"] {
            assert!(ApiRole::Readonly.allows(m));
        }
        for m in ["POST", "PUT", "DELETE", "PATCH"] {
            assert!(!ApiRole::Readonly.allows(m), "{m}");
            assert!(ApiRole::Admin.allows(m));
        }
        assert_eq!("readonly".parse(), Ok(ApiRole::Readonly));
        assert_eq!("admin".parse(), Ok(ApiRole::Admin));
        assert!("root".parse::<ApiRole>().is_err());
    }

    #[test]
    fn client_certificates_carry_their_role_and_node_ones_none() {
        let (ca_cert, ca_key) = super::super::tls::new_ca("c").unwrap();
        for role in [ApiRole::Admin, ApiRole::Readonly] {
            let req = ClientRequest::new().unwrap();
            let pem = sign_client_csr(&ca_cert, &ca_key, req.csr_pem(), "alice", role).unwrap();
            let der = cert_from_pem(&pem).unwrap();
            assert_eq!(client_role(&der), Some(role));
            assert_eq!(client_name(&der).as_deref(), Some("alice"));
            // Not a node's: the cluster port would refuse it.
            assert!(super::super::tls::peer_identity(&der).is_err());
            assert!(client_config(&ca_cert, &pem, &req.key_pem()).is_ok());
        }
        let node = super::super::tls::test_ca::TestCa::generate("c");
        let id = node.issue(&common::NodeId::random(), common::node::Role::Manager);
        assert_eq!(client_role(&cert_from_pem(&id.cert_pem).unwrap()), None);
        assert!(sign_client_csr(&ca_cert, &ca_key, "junk", "alice", ApiRole::Admin).is_err());
        let req = ClientRequest::new().unwrap();
        assert!(sign_client_csr(&ca_cert, &ca_key, req.csr_pem(), "a b", ApiRole::Admin).is_err());
        let ips = ["127.0.0.1".parse().unwrap()];
        let lifetime = std::time::Duration::from_secs(30);
        let (cert, key) = issue_server_cert(&ca_cert, &ca_key, &ips, &["localhost".into()], lifetime).unwrap();
        let v = super::super::tls::Validity::of_pem(&cert).unwrap();
        let span = v.not_after.duration_since(v.not_before).unwrap().as_secs();
        assert!((32..=34).contains(&span), "30 s and 3 s of skew: {span}");
        assert!(server_config(&ca_cert, LiveCert::from_pem(&[&cert], &key).unwrap()).is_ok());
    }
}

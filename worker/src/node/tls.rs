//! Security of the cluster port as a node sees it: its identity (key and
//! certificate), join tokens that pin the CA, the certificate profiles, and
//! the rustls configurations built from them.
//!
//! The model is Swarm's:
//!
//! - `shoal daemon --init` makes a self-signed cluster CA (managers hold it:
//!   `manager::ca`, whose certificate and key live in the replicated store,
//!   so every manager can admit nodes); what the CA's certificate and a
//!   node's say is decided here ([`new_ca`], [`sign_node_csr`]), beside the
//!   code that reads them back ([`peer_identity`]).
//! - Every node holds a [`NodeIdentity`]: its own key (made on the node, it
//!   never leaves it), a certificate the CA signed from the node's CSR, and
//!   the CA certificate. The certificate says who the node is: CN = node id,
//!   OU = `manager` or `worker`, and the DNS name [`CLUSTER_SERVER_NAME`],
//!   which is what a dialler checks (nodes are dialled by IP).
//! - A join token ([`JoinToken`]) carries the SHA-256 [`Fingerprint`] of the
//!   CA certificate, so a joining node, which has no certificate yet, checks
//!   the manager before it sends its token ([`join_client_config`]).
//! - All node-to-node traffic is mutual TLS 1.3 ([`Tls`]); a listener lets a
//!   client without a certificate finish the handshake only so that it can
//!   send a join hello (see `net::authorize`).
//!
//! Crypto is rustls with the `ring` provider, passed explicitly everywhere
//! (no process-wide default provider).

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use common::node::Role;
use common::NodeId;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use time::{Duration, OffsetDateTime};

/// The DNS name in every node certificate; diallers verify the server
/// against it since they know peers by IP address only.
pub const CLUSTER_SERVER_NAME: &str = "shoal-cluster";

/// How long the cluster CA is valid. No certificate it signs outlives it.
const CA_VALIDITY: Duration = Duration::days(20 * 365);

/// Node certificates' lifetime unless the cluster says otherwise (`shoal
/// daemon --init --cert-expiry`), Swarm's default: 90 days.
pub const DEFAULT_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);
/// The shortest lifetime `--cert-expiry` takes, Swarm's minimum: 1 hour.
pub const MIN_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);
/// The shortest lifetime the hidden, test-only `--test-cert-expiry-secs`
/// takes (a node renews at 2/3 of it, so a few seconds of margin remain).
pub const MIN_TEST_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Files of a node's identity under `DATA_DIR/tls/`.
const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";

/// The characters of fingerprints and token secrets (lowercase base 36).
pub const TOKEN_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const BASE36: &[u8] = TOKEN_ALPHABET;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    #[error("invalid certificate request: {0}")]
    BadRequest(String),
    #[error("invalid private key: {0}")]
    BadKey(String),
    #[error("cannot set up TLS: {0}")]
    Config(String),
    #[error("the manager's CA does not match the join token")]
    CaMismatch,
    #[error("the certificate the manager issued is not for this node's key")]
    KeyMismatch,
    #[error("{0}")]
    Io(String),
}

pub(crate) fn gen_err(e: impl fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// The one crypto provider, handed explicitly to every config.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(CLUSTER_SERVER_NAME).expect("a valid DNS name")
}

// ---------------------------------------------------------------------------
// Fingerprints and join tokens

/// SHA-256 of a CA certificate's DER, shown as 50 base-36 digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Digits in the text form: 36^50 > 2^256.
    pub const LEN: usize = 50;

    pub fn of(cert_der: &[u8]) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Repeated division of the big-endian number by 36.
        let mut n = self.0;
        let mut digits = [0u8; Fingerprint::LEN];
        for d in digits.iter_mut().rev() {
            let mut rem = 0u32;
            for b in n.iter_mut() {
                let cur = (rem << 8) | u32::from(*b);
                *b = (cur / 36) as u8;
                rem = cur % 36;
            }
            *d = BASE36[rem as usize];
        }
        f.write_str(std::str::from_utf8(&digits).expect("ascii"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != Fingerprint::LEN {
            return Err(());
        }
        let mut n = [0u8; 32];
        for c in s.bytes() {
            let mut carry = BASE36.iter().position(|&x| x == c).ok_or(())? as u32;
            for b in n.iter_mut().rev() {
                let cur = u32::from(*b) * 36 + carry;
                *b = cur as u8;
                carry = cur >> 8;
            }
            if carry != 0 {
                return Err(());
            }
        }
        Ok(Fingerprint(n))
    }
}

/// `SHTKN-1-<CA fingerprint>-<secret>`, like Swarm's `SWMTKN-1-…`. The
/// secret decides the role; the fingerprint lets the joiner check the
/// manager.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca: Fingerprint,
    pub secret: String,
}

const TOKEN_PREFIX: &str = "SHTKN-1-";
/// Length of a token's secret, in [`TOKEN_ALPHABET`] characters.
pub const SECRET_LEN: usize = 25;

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.ca, self.secret)
    }
}

// The secret stays out of logs.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({TOKEN_PREFIX}{}-…)", self.ca)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token: expected SHTKN-1-<{} base-36 characters of CA digest>-<{SECRET_LEN} characters of secret>, as `shoal join-token` prints it", Fingerprint::LEN)]
pub struct MalformedToken;

impl FromStr for JoinToken {
    type Err = MalformedToken;
    fn from_str(s: &str) -> Result<Self, MalformedToken> {
        let rest = s.trim().strip_prefix(TOKEN_PREFIX).ok_or(MalformedToken)?;
        let (ca, secret) = rest.split_once('-').ok_or(MalformedToken)?;
        let ca = ca.parse().map_err(|_| MalformedToken)?;
        if secret.len() != SECRET_LEN || !secret.bytes().all(|c| BASE36.contains(&c)) {
            return Err(MalformedToken);
        }
        Ok(JoinToken { ca, secret: secret.to_string() })
    }
}

// ---------------------------------------------------------------------------
// Certificate profiles: what the cluster CA's certificate and a node's say.
// The CA that holds the key and decides whom to certify is the managers'
// (`manager::ca`); the profiles live here, beside the code that reads them
// back (`peer_identity`), so that writer and reader cannot drift apart.

/// A new self-signed cluster CA named after the cluster (two clusters' CAs
/// differ by name, so a stranger's certificate is an unknown issuer):
/// `(certificate PEM, private key PEM)`.
pub fn new_ca(cluster_id: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "shoal cluster CA");
    params.distinguished_name.push(DnType::OrganizationName, cluster_id);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::days(1);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Signs a node's CSR with the CA's key. Only the CSR's public key is used:
/// the name (CN = node id), the role (OU), the server name and the usages
/// are the CA's to decide; the certificate is valid for `lifetime` (the
/// cluster's `--cert-expiry`), never past the CA.
pub fn sign_node_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    csr_der: &[u8],
    node: &NodeId,
    role: Role,
    lifetime: std::time::Duration,
) -> Result<String, TlsError> {
    let csr =
        CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(|e| TlsError::BadRequest(e.to_string()))?;
    let ca_der = cert_from_pem(ca_cert_pem)?;
    let key = KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let ca_expires = ca.validity().not_after.to_datetime();
    let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(gen_err)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node.as_str());
    params.distinguished_name.push(DnType::OrganizationalUnitName, role.to_string());
    params.subject_alt_names = vec![SanType::DnsName(CLUSTER_SERVER_NAME.try_into().map_err(gen_err)?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity_from(OffsetDateTime::now_utc(), lifetime, ca_expires);
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&csr.public_key, &issuer).map_err(gen_err)?;
    Ok(cert.pem())
}

/// `(not_before, not_after)` of a certificate issued at `now` for
/// `lifetime`: it starts a little earlier, for clocks a little behind (a
/// tenth of the lifetime, at most a minute, so that renewal at 2/3 of the
/// whole still comes well before the end of a short one), and ends after
/// `lifetime` or with the CA, whichever is first.
pub(crate) fn validity_from(
    now: OffsetDateTime,
    lifetime: std::time::Duration,
    ca_expires: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    let lifetime = Duration::try_from(lifetime).unwrap_or(CA_VALIDITY).min(CA_VALIDITY);
    let skew = Duration::min(lifetime / 10_i32, Duration::minutes(1));
    (now - skew, (now + lifetime).min(ca_expires))
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// after 2/3 of its lifetime, as Swarm does (it picks at random between
/// half and 80 %), leaving a third of it to get the next one.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime * 2 / 3
}

/// Shows a certificate's expiry on `/metrics`:
/// `shoal_cert_expiry_seconds{cert="node"|"api"}`, in seconds since the epoch.
pub fn show_expiry(which: &str, v: &Validity) {
    crate::node::metrics::metrics()
        .gauge_family("shoal_cert_expiry_seconds", "When this node's certificate expires (Unix time)", "cert")
        .set(which, v.expires_unix());
}

/// Counts a renewal of this node's certificate on `/metrics`:
/// `shoal_cert_renewals_total{result="ok"|"failed"}` for the node's,
/// `shoal_api_cert_renewals_total{result}` for the API server's.
pub fn count_renewal(api: bool, ok: bool) {
    let m = crate::node::metrics::metrics();
    let family = match api {
        false => m.counter_family("shoal_cert_renewals", "Renewals of the node certificate, by result", "result"),
        true => {
            m.counter_family("shoal_api_cert_renewals", "Renewals of the API server certificate, by result", "result")
        }
    };
    family.inc(if ok { "ok" } else { "failed" });
}

/// A certificate's validity, as it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    pub fn of_pem(cert_pem: &str) -> Result<Validity, TlsError> {
        Validity::of_der(&cert_from_pem(cert_pem)?)
    }

    pub fn of_der(der: &[u8]) -> Result<Validity, TlsError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let at = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            match u64::try_from(secs) {
                Ok(s) => UNIX_EPOCH + std::time::Duration::from_secs(s),
                Err(_) => UNIX_EPOCH,
            }
        };
        Ok(Validity { not_before: at(cert.validity().not_before), not_after: at(cert.validity().not_after) })
    }

    /// See [`renewal_time`].
    pub fn renewal_time(&self) -> SystemTime {
        renewal_time(self.not_before, self.not_after)
    }

    /// `not_after` in seconds since the Unix epoch (for a gauge).
    pub fn expires_unix(&self) -> i64 {
        self.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::thread_rng().gen();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadCertificate(e.to_string()))
}

// ---------------------------------------------------------------------------
// A node's identity

/// A key made on this node and the CSR that asks the CA to certify it.
pub struct CertificateRequest {
    key: KeyPair,
    csr_der: Vec<u8>,
}

impl CertificateRequest {
    pub fn new() -> Result<CertificateRequest, TlsError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(gen_err)?;
        Ok(CertificateRequest { key, csr_der: csr.der().to_vec() })
    }

    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }

    /// The identity once the CA answered; checks that the CA is the one
    /// `expected` pins and that the certificate is for this key.
    pub fn complete(
        self,
        cert_pem: String,
        ca_pem: String,
        expected: Option<Fingerprint>,
    ) -> Result<NodeIdentity, TlsError> {
        let ca_der = cert_from_pem(&ca_pem)?;
        if expected.is_some_and(|fp| fp != Fingerprint::of(&ca_der)) {
            return Err(TlsError::CaMismatch);
        }
        let cert_der = cert_from_pem(&cert_pem)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != self.key.public_key_raw() {
            return Err(TlsError::KeyMismatch);
        }
        let id = NodeIdentity { key_pem: self.key.serialize_pem(), cert_pem, ca_pem };
        id.peer()?;
        Ok(id)
    }
}

/// What a node holds: its key, its certificate and the cluster CA's.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").field("peer", &self.peer().ok()).finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Who the certificate says this node is.
    pub fn peer(&self) -> Result<PeerIdentity, TlsError> {
        peer_identity(&cert_from_pem(&self.cert_pem)?)
    }

    /// A key for what this node keeps sealed beside its identity (its copy
    /// of the gossip keys): derived from its private key, so the sealed
    /// file alone tells nothing, and a node whose key is read is exposed
    /// anyway. It changes with the node's key (a new role's certificate).
    pub fn storage_key(&self) -> crate::node::seal::SealKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"shoal node storage key v1\0");
        ctx.update(self.key_pem.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(ctx.finish().as_ref());
        crate::node::seal::SealKey::from_bytes(k)
    }

    pub fn ca_fingerprint(&self) -> Result<Fingerprint, TlsError> {
        Ok(Fingerprint::of(&cert_from_pem(&self.ca_pem)?))
    }

    /// Writes `dir/{ca.crt,node.crt,node.key}`; the key and the directory
    /// are readable by the owner only. All three are written to temporary
    /// files and synced before any is renamed into place, so a save cut
    /// short leaves either the old identity whole or new files that
    /// [`NodeIdentity::load`] finishes moving in (a renewal replaces key
    /// and certificate together).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let io =
            |what: &str, e: std::io::Error| TlsError::Io(format!("cannot write {}: {e}", dir.join(what).display()));
        fs::create_dir_all(dir).map_err(|e| io("", e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io("", e))?;
        let files =
            [(KEY_FILE, &self.key_pem, 0o600), (CERT_FILE, &self.cert_pem, 0o644), (CA_FILE, &self.ca_pem, 0o644)];
        for (name, text, mode) in files {
            let tmp = dir.join(format!("{name}.tmp"));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)
                .map_err(|e| io(name, e))?;
            f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io(name, e))?;
        }
        for (name, _, _) in files {
            fs::rename(dir.join(format!("{name}.tmp")), dir.join(name)).map_err(|e| io(name, e))?;
        }
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads what [`NodeIdentity::save`] wrote; `None` if nothing is there.
    /// If the key and certificate do not belong together (a save stopped
    /// between its renames), the synced temporary files finish it.
    pub fn load(dir: &Path) -> Result<Option<NodeIdentity>, TlsError> {
        let Some(id) = Self::read(dir)? else { return Ok(None) };
        if id.key_matches() {
            return Ok(Some(id));
        }
        for name in [KEY_FILE, CERT_FILE, CA_FILE] {
            let tmp = dir.join(format!("{name}.tmp"));
            if tmp.exists() {
                fs::rename(&tmp, dir.join(name))
                    .map_err(|e| TlsError::Io(format!("cannot finish writing {}: {e}", dir.join(name).display())))?;
            }
        }
        match Self::read(dir)? {
            Some(id) if id.key_matches() => Ok(Some(id)),
            _ => Err(TlsError::KeyMismatch),
        }
    }

    fn read(dir: &Path) -> Result<Option<NodeIdentity>, TlsError> {
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read_to_string(&p).map_err(|e| (e.kind(), TlsError::Io(format!("cannot read {}: {e}", p.display()))))
        };
        let key_pem = match read(KEY_FILE) {
            Ok(k) => k,
            Err((std::io::ErrorKind::NotFound, _)) => return Ok(None),
            Err((_, e)) => return Err(e),
        };
        let id = NodeIdentity {
            key_pem,
            cert_pem: read(CERT_FILE).map_err(|e| e.1)?,
            ca_pem: read(CA_FILE).map_err(|e| e.1)?,
        };
        id.peer()?;
        Ok(Some(id))
    }

    /// Whether the certificate is for this key.
    fn key_matches(&self) -> bool {
        certified_key(&[&self.cert_pem], &self.key_pem).is_ok_and(|k| k.keys_match().is_ok())
    }
}

/// Who a verified certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: NodeId,
    pub role: Role,
}

/// Reads CN (node id) and OU (role) of a node certificate. Call it on a
/// certificate the TLS layer has verified against the cluster CA.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let bad = |why: &str| TlsError::BadCertificate(why.to_string());
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).ok_or_else(|| bad("no node id (CN)"))?;
    let role = match subject.iter_organizational_unit().next().and_then(|a| a.as_str().ok()) {
        Some("manager") => Role::Manager,
        Some("worker") => Role::Worker,
        _ => return Err(bad("no role (OU manager or worker)")),
    };
    Ok(PeerIdentity { node_id: NodeId::from(cn), role })
}

// ---------------------------------------------------------------------------
// rustls configurations

/// A node's TLS side, made once from its identity and shared by the
/// listener and every dialler. Its certificate can be replaced while it
/// runs ([`Tls::renew`]): new handshakes present the new one, connections
/// already open keep theirs.
#[derive(Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    cert: Arc<LiveCert>,
    identity: Arc<parking_lot::RwLock<NodeIdentity>>,
    me: PeerIdentity,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("me", &self.me).finish_non_exhaustive()
    }
}

pub(crate) fn config_err(e: impl fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A certificate chain and key that handshakes take as they start, and
/// that can be replaced meanwhile: rustls asks for it per handshake, as
/// a server ([`ResolvesServerCert`]) and as a client ([`ResolvesClientCert`]).
#[derive(Debug)]
pub struct LiveCert {
    current: parking_lot::RwLock<Arc<CertifiedKey>>,
}

impl LiveCert {
    /// From a chain (the leaf first) and its key, in PEM.
    pub fn from_pem(chain_pem: &[&str], key_pem: &str) -> Result<Arc<LiveCert>, TlsError> {
        Ok(Arc::new(LiveCert { current: parking_lot::RwLock::new(certified_key(chain_pem, key_pem)?) }))
    }

    /// Replaces the chain and key for every handshake from now on.
    pub fn set(&self, chain_pem: &[&str], key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(chain_pem, key_pem)?;
        *self.current.write() = key;
        Ok(())
    }

    /// The leaf certificate handshakes present now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.read().cert[0].clone()
    }
}

fn certified_key(chain_pem: &[&str], key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = chain_pem.iter().map(|p| cert_from_pem(p)).collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(TlsError::BadCertificate("no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey(e.to_string()))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::BadKey(e.to_string()))?;
    Ok(Arc::new(key))
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl Tls {
    pub fn new(id: &NodeIdentity) -> Result<Tls, TlsError> {
        let me = id.peer()?;
        let ca = cert_from_pem(&id.ca_pem)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        let roots = Arc::new(roots);
        let cert = LiveCert::from_pem(&[&id.cert_pem, &id.ca_pem], &id.key_pem)?;

        // Clients without a certificate get through the handshake so that a
        // joining node can talk; the router accepts nothing but a join hello
        // from them.
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(config_err)?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(cert.clone());
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(cert.clone());
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            cert,
            identity: Arc::new(parking_lot::RwLock::new(id.clone())),
            me,
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// This node, as its certificate says.
    pub fn me(&self) -> &PeerIdentity {
        &self.me
    }

    /// The identity handshakes use now.
    pub fn identity(&self) -> NodeIdentity {
        self.identity.read().clone()
    }

    /// Switches every clone of this to a renewed identity: the same node in
    /// the same role under the same CA, with a new key and certificate.
    /// Handshakes from now on present it; open connections are untouched.
    pub fn renew(&self, id: &NodeIdentity) -> Result<(), TlsError> {
        let peer = id.peer()?;
        if peer != self.me {
            return Err(TlsError::BadCertificate(format!(
                "the renewed certificate is for {} {}, not this {} {}",
                peer.role, peer.node_id, self.me.role, self.me.node_id
            )));
        }
        if id.ca_fingerprint()? != self.identity.read().ca_fingerprint()? {
            return Err(TlsError::CaMismatch);
        }
        let mut current = self.identity.write();
        self.cert.set(&[&id.cert_pem, &id.ca_pem], &id.key_pem)?;
        *current = id.clone();
        Ok(())
    }
}

/// For a joining node: no client certificate, and the server is accepted
/// only if the chain it presents holds the CA the token pins and its
/// certificate verifies against that CA.
pub fn join_client_config(ca: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { ca, provider: provider() }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCa {
    ca: Fingerprint,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
struct CaMismatch;

impl fmt::Display for CaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&TlsError::CaMismatch, f)
    }
}

impl std::error::Error for CaMismatch {}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mismatch = || {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(CaMismatch))))
        };
        let ca = intermediates.iter().find(|c| Fingerprint::of(c) == self.ca).ok_or_else(mismatch)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| mismatch())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A readable message for a failed handshake: the error rustls gave, with
/// a custom verifier's own message unwrapped.
pub fn describe_handshake_error(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => other.0.to_string(),
        Some(tls) => tls.to_string(),
        None => e.to_string(),
    }
}

/// A CA for this crate's tests, over the same profiles (the cluster's own
/// CA, which managers keep in the store, is `manager::ca::ClusterCa`).
#[cfg(test)]
pub(crate) mod test_ca {
    use super::*;

    pub struct TestCa {
        pub cert_pem: String,
        key_pem: String,
    }

    impl TestCa {
        pub fn generate(name: &str) -> TestCa {
            let (cert_pem, key_pem) = new_ca(name).unwrap();
            TestCa { cert_pem, key_pem }
        }
        pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
            cert_from_pem(&self.cert_pem)
        }
        pub fn fingerprint(&self) -> Result<Fingerprint, TlsError> {
            Ok(Fingerprint::of(&self.cert_der()?))
        }
        pub fn sign(&self, csr_der: &[u8], node: &NodeId, role: Role) -> Result<String, TlsError> {
            sign_node_csr(&self.cert_pem, &self.key_pem, csr_der, node, role, DEFAULT_CERT_EXPIRY)
        }
        pub fn issue(&self, node: &NodeId, role: Role) -> NodeIdentity {
            let req = CertificateRequest::new().unwrap();
            let cert = self.sign(req.csr_der(), node, role).unwrap();
            req.complete(cert, self.cert_pem.clone(), None).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_ca::TestCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn node(ca: &TestCa, role: Role) -> (NodeId, NodeIdentity) {
        let id = NodeId::random();
        let ident = ca.issue(&id, role);
        (id, ident)
    }

    #[test]
    fn fingerprints_round_trip_as_50_base36_digits() {
        for bytes in [[0u8; 32], [0xff; 32], *b"0123456789abcdef0123456789abcdef"] {
            let fp = Fingerprint(bytes);
            let text = fp.to_string();
            assert_eq!(text.len(), Fingerprint::LEN);
            assert!(text.bytes().all(|c| BASE36.contains(&c)), "{text}");
            assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        }
        assert_eq!(Fingerprint([0; 32]).to_string(), "0".repeat(50));
        // 36^50 is more than 2^256: the largest digits overflow.
        assert!("z".repeat(50).parse::<Fingerprint>().is_err());
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("A".repeat(50).parse::<Fingerprint>().is_err(), "lowercase only");
    }

    #[test]
    fn tokens_parse_or_say_what_is_expected() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let t = JoinToken { ca: ca.fingerprint().unwrap(), secret: "0123456789abcdefghijklmno".into() };
        let text = t.to_string();
        assert!(text.starts_with("SHTKN-1-"), "{text}");
        assert_eq!(text.len(), 8 + 50 + 1 + 25);
        assert_eq!(text.parse::<JoinToken>(), Ok(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret), "Debug hides the secret");
        for bad in
            ["", "SHTKN-1-wrong-wrong", "SWMTKN-1-x-y", &text[..text.len() - 1], &text.replace("SHTKN-1", "SHTKN-2")]
        {
            let err = bad.parse::<JoinToken>().unwrap_err();
            assert!(err.to_string().starts_with("invalid join token: expected SHTKN-1-<50 base-36"), "{err}");
        }
    }

    #[test]
    fn the_ca_signs_node_certificates_with_id_and_role() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let (id, ident) = node(&ca, Role::Worker);
        assert_eq!(ident.peer().unwrap(), PeerIdentity { node_id: id.clone(), role: Role::Worker });
        assert_eq!(ident.ca_fingerprint().unwrap(), ca.fingerprint().unwrap());

        // The CSR's own subject is ignored: the CA names the node.
        let req = CertificateRequest::new().unwrap();
        let m = NodeId::random();
        let cert = ca.sign(req.csr_der(), &m, Role::Manager).unwrap();
        let done = req.complete(cert.clone(), ca.cert_pem.clone(), Some(ca.fingerprint().unwrap())).unwrap();
        assert_eq!(done.peer().unwrap().role, Role::Manager);

        // A certificate for another key, or a CA other than the pinned one.
        let other = CertificateRequest::new().unwrap();
        assert_eq!(other.complete(cert.clone(), ca.cert_pem.clone(), None).unwrap_err(), TlsError::KeyMismatch);
        let req = CertificateRequest::new().unwrap();
        let cert = ca.sign(req.csr_der(), &m, Role::Manager).unwrap();
        let elsewhere = TestCa::generate(NodeId::random().as_ref()).fingerprint().unwrap();
        assert_eq!(req.complete(cert, ca.cert_pem.clone(), Some(elsewhere)).unwrap_err(), TlsError::CaMismatch);

        assert!(matches!(ca.sign(b"not a csr", &m, Role::Worker), Err(TlsError::BadRequest(_))));
    }

    #[test]
    fn identities_are_saved_with_a_private_key_file() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let (_, ident) = node(&ca, Role::Manager);
        let dir = std::env::temp_dir().join(format!("shoal-tls-test-{}", NodeId::random()));
        assert_eq!(NodeIdentity::load(&dir).unwrap(), None);
        ident.save(&dir).unwrap();
        assert_eq!(NodeIdentity::load(&dir).unwrap(), Some(ident));
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_save_cut_between_its_renames_is_finished_at_load() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let (id, old) = node(&ca, Role::Worker);
        let renewed = ca.issue(&id, Role::Worker);
        let dir = std::env::temp_dir().join(format!("shoal-tls-test-{}", NodeId::random()));
        old.save(&dir).unwrap();
        // The renewed files written and synced; only the key renamed.
        for (name, text) in [(KEY_FILE, &renewed.key_pem), (CERT_FILE, &renewed.cert_pem), (CA_FILE, &renewed.ca_pem)] {
            fs::write(dir.join(format!("{name}.tmp")), text).unwrap();
        }
        fs::rename(dir.join(format!("{KEY_FILE}.tmp")), dir.join(KEY_FILE)).unwrap();
        assert_eq!(NodeIdentity::load(&dir).unwrap(), Some(renewed.clone()));
        assert_eq!(NodeIdentity::load(&dir).unwrap(), Some(renewed));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificates_last_their_lifetime_and_renew_at_two_thirds() {
        let now = OffsetDateTime::now_utc();
        let far = now + Duration::days(3650);
        let short = std::time::Duration::from_secs(30);
        assert_eq!(validity_from(now, short, far), (now - Duration::seconds(3), now + Duration::seconds(30)));
        assert_eq!(
            validity_from(now, DEFAULT_CERT_EXPIRY, far),
            (now - Duration::minutes(1), now + Duration::days(90))
        );
        let ca_end = now + Duration::seconds(10);
        assert_eq!(validity_from(now, short, ca_end).1, ca_end, "never past the CA");
        let t0 = UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let renew = renewal_time(t0, t0 + std::time::Duration::from_secs(30));
        assert_eq!(renew, t0 + std::time::Duration::from_secs(20));
    }

    /// A server on loopback that reports, per connection, the handshake
    /// result and the client's identity.
    async fn server(
        tls: Tls,
    ) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Result<Option<PeerIdentity>, String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let acceptor = TlsAcceptor::from(tls.server_config());
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let r = match acceptor.accept(s).await {
                    Ok(mut s) => {
                        let peer = s.get_ref().1.peer_certificates().map(|c| peer_identity(&c[0]).unwrap());
                        let _ = s.write_all(b"hi").await;
                        let _ = s.flush().await;
                        Ok(peer)
                    }
                    Err(e) => Err(describe_handshake_error(&e)),
                };
                let _ = tx.send(r);
            }
        });
        (addr, rx)
    }

    async fn connect(config: Arc<ClientConfig>, addr: std::net::SocketAddr) -> Result<Vec<u8>, String> {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut s =
            TlsConnector::from(config).connect(server_name(), s).await.map_err(|e| describe_handshake_error(&e))?;
        let mut buf = vec![0u8; 2];
        s.read_exact(&mut buf).await.map_err(|e| describe_handshake_error(&e))?;
        Ok(buf)
    }

    #[tokio::test]
    async fn mutual_tls_between_nodes_of_one_cluster() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let (_, m) = node(&ca, Role::Manager);
        let (w_id, w) = node(&ca, Role::Worker);
        let (addr, mut seen) = server(Tls::new(&m).unwrap()).await;
        assert_eq!(connect(Tls::new(&w).unwrap().client_config(), addr).await.unwrap(), b"hi");
        let peer = seen.recv().await.unwrap().unwrap();
        assert_eq!(peer, Some(PeerIdentity { node_id: w_id, role: Role::Worker }));
    }

    #[tokio::test]
    async fn a_client_certificate_of_another_ca_is_refused() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let other = TestCa::generate(NodeId::random().as_ref());
        let (_, m) = node(&ca, Role::Manager);
        let (_, stranger) = node(&other, Role::Manager);
        let (addr, mut seen) = server(Tls::new(&m).unwrap()).await;
        // The stranger does not trust the server either; give it a client
        // config that trusts the server's CA but presents its own cert.
        let chain = vec![cert_from_pem(&stranger.cert_pem).unwrap(), other.cert_der().unwrap()];
        assert!(connect(trusting_presenting(&ca, chain, &stranger), addr).await.is_err());
        let err = seen.recv().await.unwrap().unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");

        // And with its own config it does not trust the server.
        let err = connect(Tls::new(&stranger).unwrap().client_config(), addr).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(seen.recv().await.unwrap().unwrap_err().contains("UnknownCA"), "the server sees the alert");

        // A CA that copies our CA's name does not help: its signature fails.
        let twin = TestCa::generate(&ca_name(&ca));
        let (_, impostor) = node(&twin, Role::Manager);
        let chain = vec![cert_from_pem(&impostor.cert_pem).unwrap()];
        assert!(connect(trusting_presenting(&ca, chain, &impostor), addr).await.is_err());
        let err = seen.recv().await.unwrap().unwrap_err();
        assert!(err.contains("BadSignature"), "{err}");
    }

    /// A client that trusts `ca` and presents `chain` with `who`'s key.
    fn trusting_presenting(ca: &TestCa, chain: Vec<CertificateDer<'static>>, who: &NodeIdentity) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().unwrap()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(who.key_pem.as_bytes()).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    /// The cluster id a CA was named after.
    fn ca_name(ca: &TestCa) -> String {
        let der = ca.cert_der().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let name = cert.subject().iter_organization().next().unwrap().as_str().unwrap().to_string();
        name
    }

    #[tokio::test]
    async fn a_joiner_checks_the_ca_against_the_token() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let (_, m) = node(&ca, Role::Manager);
        let (addr, mut seen) = server(Tls::new(&m).unwrap()).await;

        // The right fingerprint: through, without a client certificate.
        let ok = join_client_config(ca.fingerprint().unwrap()).unwrap();
        assert_eq!(connect(ok, addr).await.unwrap(), b"hi");
        assert_eq!(seen.recv().await.unwrap(), Ok(None));

        // Another CA's fingerprint: the joiner refuses the manager.
        let wrong = join_client_config(TestCa::generate(NodeId::random().as_ref()).fingerprint().unwrap()).unwrap();
        let err = connect(wrong, addr).await.unwrap_err();
        assert_eq!(err, "the manager's CA does not match the join token");
        assert!(seen.recv().await.unwrap().is_err(), "the server sees the handshake fail");

        // A server of another cluster whose chain includes our CA cert
        // cannot pass either: its certificate does not verify against it.
        let other = TestCa::generate(NodeId::random().as_ref());
        let (_, impostor) = node(&other, Role::Manager);
        let mut chain_with_ours = Tls::new(&impostor).unwrap();
        let leaf = cert_from_pem(&impostor.cert_pem).unwrap();
        let key = PrivateKeyDer::from_pem_slice(impostor.key_pem.as_bytes()).unwrap();
        chain_with_ours.server = Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf, ca.cert_der().unwrap()], key)
                .unwrap(),
        );
        let (addr, _seen) = server(chain_with_ours).await;
        let err = connect(join_client_config(ca.fingerprint().unwrap()).unwrap(), addr).await.unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
    }

    #[tokio::test]
    async fn plaintext_bytes_fail_the_handshake() {
        let ca = TestCa::generate(NodeId::random().as_ref());
        let (_, m) = node(&ca, Role::Manager);
        let (addr, mut seen) = server(Tls::new(&m).unwrap()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1").await.unwrap();
        let err = seen.recv().await.unwrap().unwrap_err();
        assert!(err.contains("corrupt message"), "{err}");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        assert!(!buf.windows(2).any(|w| w == b"hi"), "nothing readable comes back");
    }
}

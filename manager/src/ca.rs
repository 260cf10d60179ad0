//! The cluster CA: only managers hold it. Its certificate and key live in
//! the replicated store ([`crate::store::ClusterInfo`]), so every manager
//! can admit nodes, as in Swarm. It signs the certificate of each node it
//! admits (from the node's CSR: the key never leaves the node), issues the
//! first manager's own identity at `--init`, and makes join tokens that pin
//! it. What the certificates say is the node runtime's
//! ([`worker::node::tls::new_ca`], [`worker::node::tls::sign_node_csr`]),
//! where they are read back.

use std::fmt;
use std::time::Duration;

use common::node::Role;
use common::NodeId;
use rand::Rng;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use worker::node::tls::{
    self, CertificateRequest, Fingerprint, JoinToken, NodeIdentity, TlsError, SECRET_LEN, TOKEN_ALPHABET,
};

/// The cluster CA as the replicated store keeps it (PEM).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

// The key stays out of logs and panics.
impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl ClusterCa {
    /// A new self-signed CA named after the cluster.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, TlsError> {
        let (cert_pem, key_pem) = tls::new_ca(cluster_id)?;
        Ok(ClusterCa { cert_pem, key_pem })
    }

    pub fn is_empty(&self) -> bool {
        self.cert_pem.is_empty()
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        tls::cert_from_pem(&self.cert_pem)
    }

    pub fn fingerprint(&self) -> Result<Fingerprint, TlsError> {
        Ok(Fingerprint::of(&self.cert_der()?))
    }

    /// Signs a node's CSR: the certificate names `node` with `role` and is
    /// valid for `lifetime` (the cluster's `--cert-expiry`).
    pub fn sign(&self, csr_der: &[u8], node: &NodeId, role: Role, lifetime: Duration) -> Result<String, TlsError> {
        tls::sign_node_csr(&self.cert_pem, &self.key_pem, csr_der, node, role, lifetime)
    }

    /// An identity made where the CA is (the first manager): the key is
    /// still made apart and certified through a CSR.
    pub fn issue(&self, node: &NodeId, role: Role, lifetime: Duration) -> Result<NodeIdentity, TlsError> {
        let req = CertificateRequest::new()?;
        let cert = self.sign(req.csr_der(), node, role, lifetime)?;
        req.complete(cert, self.cert_pem.clone(), None)
    }

    /// A new join token with a random secret, pinning this CA.
    pub fn new_token(&self) -> Result<JoinToken, TlsError> {
        Ok(new_token(self.fingerprint()?))
    }
}

/// A token like Swarm's, `SHTKN-1-<CA fingerprint>-<secret>`, with a
/// random secret; the secret decides the role.
pub fn new_token(ca: Fingerprint) -> JoinToken {
    let mut rng = rand::thread_rng();
    let secret = (0..SECRET_LEN).map(|_| TOKEN_ALPHABET[rng.gen_range(0..TOKEN_ALPHABET.len())] as char).collect();
    JoinToken { ca, secret }
}

#[cfg(test)]
mod tests {
    use super::*;
    use worker::node::tls::PeerIdentity;

    #[test]
    fn tokens_are_random_parse_back_and_pin_the_ca() {
        let ca = ClusterCa::generate("c").unwrap();
        let t = ca.new_token().unwrap();
        assert_eq!(t.ca, ca.fingerprint().unwrap());
        assert_eq!(t.to_string().parse::<JoinToken>(), Ok(t.clone()));
        assert_ne!(new_token(t.ca).secret, t.secret);
    }

    #[test]
    fn the_ca_certifies_nodes_and_hides_its_key() {
        let ca = ClusterCa::generate("c").unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"), "Debug hides the key");
        let node = NodeId::random();
        let ident = ca.issue(&node, Role::Manager, tls::DEFAULT_CERT_EXPIRY).unwrap();
        assert_eq!(ident.peer().unwrap(), PeerIdentity { node_id: node, role: Role::Manager });
        assert_eq!(ident.ca_fingerprint().unwrap(), ca.fingerprint().unwrap());
        assert!(matches!(
            ca.sign(b"not a csr", &NodeId::random(), Role::Worker, tls::DEFAULT_CERT_EXPIRY),
            Err(TlsError::BadRequest(_))
        ));
        // A store's CA from before the move still reads (same fields).
        let round: ClusterCa = rmp_serde::from_slice(&rmp_serde::to_vec_named(&ca).unwrap()).unwrap();
        assert_eq!(round, ca);
    }
}

//! Entry point for the fuzz targets in `tests/fuzz` and their corpus
//! replay test; not an API: shoal's own `/v1` request bodies, decoded as
//! `web::Json` decodes them and then checked as the handlers check them.

use common::api::{CertRequest, FileCreate, NodeUpdate, ServiceUpdate};
use common::network::NetworkSpec;
use common::secret::{validate_data, validate_name, Kind};
use common::spec::{ServiceSpec, TaskTemplate};

use super::locked::UnlockRequest;

/// A `/v1` request body, as each kind of request that has one.
pub fn shoal_body(bytes: &[u8]) {
    if let Ok(s) = serde_json::from_slice::<ServiceSpec>(bytes) {
        let _ = s.validate();
        let json = serde_json::to_vec(&s).expect("a spec encodes");
        let back: ServiceSpec = serde_json::from_slice(&json).expect("an encoded spec decodes");
        assert_eq!(serde_json::to_vec(&back).expect("a spec encodes"), json, "ServiceSpec round trip");
    }
    if let Ok(u) = serde_json::from_slice::<ServiceUpdate>(bytes) {
        let _ = u.apply(&ServiceSpec::new("web", 2, TaskTemplate::new("busybox"))).map(|s| s.validate());
    }
    let _ = serde_json::from_slice::<NodeUpdate>(bytes);
    let _ = serde_json::from_slice::<CertRequest>(bytes);
    let _ = serde_json::from_slice::<UnlockRequest>(bytes);
    if let Ok(f) = serde_json::from_slice::<FileCreate>(bytes) {
        let _ = validate_name(&f.name);
        if let Ok(data) = super::files::decode_data(&f.data) {
            let _ = validate_data(Kind::Secret, &data);
        }
    }
    if let Ok(n) = serde_json::from_slice::<NetworkSpec>(bytes) {
        let _ = n.validate();
    }
}

#[cfg(test)]
mod tests {
    use common::api::ServiceUpdate;
    use common::mesh::PortConfig;

    use super::*;
    use crate::raft::fuzzing::{replay, write_seeds};

    #[test]
    fn the_shoal_api_corpus_replays_without_a_panic() {
        replay("shoal_api", shoal_body);
    }

    /// Regenerates the shoal_api seeds: `cargo test --release -p manager
    /// write_shoal_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_shoal_seeds() {
        let mut spec = ServiceSpec::new("web", 3, TaskTemplate::new("nginx:alpine"));
        spec.task.ports = vec!["8080:80".parse::<PortConfig>().unwrap()];
        spec.task.env = vec!["A=1".into()];
        spec.labels.insert("tier".into(), "front".into());
        let update = ServiceUpdate { replicas: Some(5), ..Default::default() };
        let inputs = vec![
            serde_json::to_vec(&spec).unwrap(),
            serde_json::to_vec(&ServiceSpec::new("one", 1, TaskTemplate::new("busybox"))).unwrap(),
            serde_json::to_vec(&update).unwrap(),
            br#"{"availability":"drain","label_add":{"zone":"a"},"label_rm":["old"]}"#.to_vec(),
            br#"{"name":"alice","role":"readonly","csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}"#.to_vec(),
            br#"{"key":"SHKEY-1-abc"}"#.to_vec(),
            br#"{"name":"db-password","labels":{},"data":"aHVudGVyMg=="}"#.to_vec(),
            br#"{"name":"app","subnet":"10.20.0.0/16","attachable":true}"#.to_vec(),
        ];
        write_seeds("shoal_api", &inputs);
    }
}

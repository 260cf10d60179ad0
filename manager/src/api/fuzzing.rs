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

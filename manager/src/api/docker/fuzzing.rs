//! Entry points for the fuzz targets in `tests/fuzz` and their corpus
//! replay test; not an API: the Engine API's request bodies and `filters`
//! parameter, read as the handlers read them.

use common::secret::Kind;
use serde_json::Value;

use super::{files, filters::Filters, networks, nodes, parse_body, spec};

/// The Engine API target: a NUL byte and then a `filters` parameter, or
/// else a request body.
pub fn engine_input(data: &[u8]) {
    match data.split_first() {
        Some((0, rest)) => filters(&String::from_utf8_lossy(rest)),
        _ => engine_body(data),
    }
}

/// A request body of the Engine API: parsed as [`super::body`] does, then
/// read as each handler that takes a body reads it. A ServiceSpec that
/// reads must read the same after a trip through its Engine rendering.
pub fn engine_body(bytes: &[u8]) {
    let Ok(doc) = parse_body(bytes) else { return };
    let _ = spec::ignored(&doc);
    if let Ok(s) = spec::from_engine(&doc) {
        let _ = s.validate();
        let _ = spec::engine_view_with_defaults(&s);
        let mut plain = s.clone();
        plain.engine_spec = None;
        let rendered = spec::to_engine(&plain);
        let mut back = spec::from_engine(&rendered).expect("a rendered ServiceSpec reads back");
        back.engine_spec = None;
        assert_eq!(back, plain, "ServiceSpec round trip through the Engine rendering");
    }
    let _ = files::file_spec(doc.clone(), Kind::Secret);
    let _ = files::file_spec(doc.clone(), Kind::Config);
    if let Ok(n) = networks::spec_of(doc.clone()) {
        let _ = n.validate();
    }
    let _ = serde_json::from_value::<nodes::NodeSpec>(doc);
}

/// The `filters` query parameter (already percent-decoded).
pub fn filters(raw: &str) {
    if let Ok(f) = Filters::parse(Some(raw)) {
        let _ = f.only(&["name", "id", "label"]);
        let _ = f.labels("label", &Default::default());
        let _ = f.any("name", |v: &str| v.is_empty());
    }
}

/// What [`engine_body`] reads a body as before the handlers see it.
pub fn canonical(bytes: &[u8]) -> Option<Value> {
    parse_body(bytes).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::raft::fuzzing::{replay, write_seeds};

    #[test]
    fn the_engine_api_corpus_replays_without_a_panic() {
        replay("engine_api", engine_input);
    }

    /// Regenerates the engine_api seeds: `cargo test --release -p manager
    /// write_engine_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_engine_seeds() {
        let docs = [
            // What `docker service create --replicas 3 -p 8080:80 img sh -c x` sends.
            json!({
                "Name": "web", "Labels": {},
                "TaskTemplate": {
                    "ContainerSpec": {"Image": "img", "Args": ["sh", "-c", "x"], "Init": false,
                                      "StopGracePeriod": 10_000_000_000i64, "DNSConfig": {}, "Isolation": "default"},
                    "Resources": {"Limits": {}, "Reservations": {}},
                    "RestartPolicy": {"Condition": "any", "Delay": 5_000_000_000i64, "MaxAttempts": 0},
                    "Placement": {}, "ForceUpdate": 0, "Runtime": "container"
                },
                "Mode": {"Replicated": {"Replicas": 3}},
                "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000i64,
                                 "MaxFailureRatio": 0, "Order": "stop-first"},
                "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000i64,
                                   "MaxFailureRatio": 0, "Order": "stop-first"},
                "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                                           "PublishMode": "ingress"}]}
            }),
            json!({
                "Name": "agent", "Labels": {"a": "b"},
                "TaskTemplate": {
                    "ContainerSpec": {"Image": "busybox:1", "Command": ["top"], "Env": ["A=1", "B"],
                                      "Labels": {"x": "y"}, "Hostname": "h", "User": "1000", "Dir": "/tmp",
                                      "Mounts": [{"Type": "bind", "Source": "/var", "Target": "/v", "ReadOnly": true}],
                                      "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1_000_000_000i64,
                                                      "Timeout": 2_000_000_000i64, "Retries": 3},
                                      "Secrets": [{"SecretName": "s", "SecretID": "x",
                                                   "File": {"Name": "s", "UID": "0", "GID": "0", "Mode": 292}}]},
                    "Resources": {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 67_108_864},
                                  "Reservations": {"NanoCPUs": 100_000_000}},
                    "Placement": {"Constraints": ["node.role==worker"], "MaxReplicas": 2,
                                  "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]},
                    "Networks": [{"Target": "app", "Aliases": ["api"]}]
                },
                "Mode": {"Global": {}},
                "EndpointSpec": {"Mode": "dnsrr"}
            }),
            json!({"Name": "job", "TaskTemplate": {"ContainerSpec": {"Image": "i"}},
                   "Mode": {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}}),
            json!({"Name": "app", "Driver": "overlay", "Attachable": true, "Labels": {},
                   "IPAM": {"Config": [{"Subnet": "10.20.0.0/16"}]}}),
            json!({"Name": "pw", "Labels": {"k": "v"}, "Data": "aGVsbG8="}),
            json!({"Labels": {"zone": "a"}, "Role": "worker", "Availability": "drain"}),
        ];
        let mut inputs: Vec<Vec<u8>> = docs.iter().map(|d| serde_json::to_vec_pretty(d).unwrap()).collect();
        for f in [r#"{"name":{"web":true}}"#, r#"{"label":["a=b","c"],"id":["x"]}"#, r#"{"name":"web"}"#] {
            inputs.push([&[0u8][..], f.as_bytes()].concat());
        }
        write_seeds("engine_api", &inputs);
    }
}

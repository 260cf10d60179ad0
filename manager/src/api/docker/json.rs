//! Docker's JSON is decoded by Go, which matches object keys without regard
//! to case, and clients rely on it (the Python SDK sends
//! `"Mode": {"replicated": {"Replicas": 3}}`) while expecting Docker's own
//! casing back. [`canonical`] rewrites every key it knows into that casing
//! before anything reads or stores a spec, so that typed decoding can be
//! exact and `inspect` answers in the casing the Engine uses.

use serde_json::{Map, Value};

/// The property names of Docker's ServiceSpec and NodeSpec (and everything
/// they contain), in the Engine's casing, from the API's swagger definition.
const KEYS: &[&str] = &[
    "Aliases",
    "AppArmor",
    "Architecture",
    "Args",
    "Availability",
    "BindOptions",
    "CapabilityAdd",
    "CapabilityDrop",
    "Command",
    "Condition",
    "Config",
    "ConfigID",
    "ConfigName",
    "Configs",
    "Consistency",
    "Constraints",
    "ContainerID",
    "ContainerSpec",
    "CreateMountpoint",
    "CredentialSpec",
    "Delay",
    "Description",
    "Dir",
    "Disable",
    "Disabled",
    "DiscreteResourceSpec",
    "DNSConfig",
    "DriverConfig",
    "DriverOpts",
    "EndpointSpec",
    "Env",
    "FailureAction",
    "File",
    "ForceUpdate",
    "GenericResources",
    "GID",
    "Global",
    "GlobalJob",
    "Groups",
    "Hard",
    "HealthCheck",
    "Hostname",
    "Hosts",
    "Image",
    "ImageOptions",
    "Init",
    "Interval",
    "Isolation",
    "Kind",
    "Labels",
    "Level",
    "Limits",
    "LogDriver",
    "MaxAttempts",
    "MaxConcurrent",
    "MaxFailureRatio",
    "MaxReplicas",
    "MemoryBytes",
    "MemorySwappiness",
    "Mode",
    "Monitor",
    "Mounts",
    "Name",
    "NamedResourceSpec",
    "Nameservers",
    "NanoCPUs",
    "NetworkAttachmentSpec",
    "Networks",
    "NoCopy",
    "NoNewPrivileges",
    "NonRecursive",
    "OomScoreAdj",
    "OpenStdin",
    "Options",
    "Order",
    "OS",
    "Parallelism",
    "Pids",
    "Placement",
    "Platforms",
    "PluginPrivilege",
    "PluginSpec",
    "Ports",
    "Preferences",
    "Privileges",
    "Profile",
    "Propagation",
    "Protocol",
    "PublishedPort",
    "PublishMode",
    "ReadOnly",
    "ReadOnlyForceRecursive",
    "ReadOnlyNonRecursive",
    "Registry",
    "Remote",
    "Replicas",
    "Replicated",
    "ReplicatedJob",
    "Reservations",
    "Resources",
    "RestartPolicy",
    "Retries",
    "Role",
    "RollbackConfig",
    "Runtime",
    "Search",
    "Seccomp",
    "SecretID",
    "SecretName",
    "Secrets",
    "SELinuxContext",
    "SizeBytes",
    "Soft",
    "Source",
    "Spread",
    "SpreadDescriptor",
    "StartInterval",
    "StartPeriod",
    "StopGracePeriod",
    "StopSignal",
    "Subpath",
    "SwapBytes",
    "Sysctls",
    "Target",
    "TargetPort",
    "TaskTemplate",
    "Test",
    "Timeout",
    "TmpfsOptions",
    "TotalCompletions",
    "TTY",
    "Type",
    "UID",
    "Ulimits",
    "UpdateConfig",
    "User",
    "Value",
    "VolumeOptions",
    "Window",
];

/// Objects whose keys are the user's own (labels, driver options, sysctls):
/// their keys are kept exactly as sent.
pub(super) const FREE_MAPS: &[&str] = &["AuxiliaryAddresses", "DriverOpts", "Labels", "Options", "Sysctls"];

/// The Engine's casing of `key`, if it is one of Docker's property names.
fn known(key: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| k.eq_ignore_ascii_case(key))
}

/// `value` with every known key in Docker's casing; unknown keys and the
/// keys of free maps stay as they are. If two keys of one object collapse
/// into the same name, the one written last wins, as with Go's decoder.
pub fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(canonical_map(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn canonical_map(map: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in map {
        let key = known(&key).map(str::to_string).unwrap_or(key);
        let value = if FREE_MAPS.contains(&key.as_str()) { value } else { canonical(value) };
        out.insert(key, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_take_the_engines_casing_but_labels_keep_their_own() {
        let sent = json!({
            "name": "web",
            "Labels": {"com.example.Tier": "front", "name": "x"},
            "mode": {"replicated": {"replicas": 3}},
            "TaskTemplate": {"containerspec": {"IMAGE": "img", "Env": ["a=B"], "Sysctls": {"net.Core": "1"}},
                             "Placement": {"constraints": ["node.role==manager"]}},
            "endpointspec": {"ports": [{"targetport": 80, "PublishedPort": 8080, "protocol": "tcp"}]},
            "XUnknown": {"keepMe": 1}
        });
        let want = json!({
            "Name": "web",
            "Labels": {"com.example.Tier": "front", "name": "x"},
            "Mode": {"Replicated": {"Replicas": 3}},
            "TaskTemplate": {"ContainerSpec": {"Image": "img", "Env": ["a=B"], "Sysctls": {"net.Core": "1"}},
                             "Placement": {"Constraints": ["node.role==manager"]}},
            "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8080, "Protocol": "tcp"}]},
            "XUnknown": {"keepMe": 1}
        });
        assert_eq!(canonical(sent), want);
    }

    #[test]
    fn canonical_is_idempotent_and_keeps_values() {
        let v = json!({"Name": "a", "TaskTemplate": {"ContainerSpec": {"Args": ["Name", "mode"]}}});
        assert_eq!(canonical(canonical(v.clone())), v);
    }
}

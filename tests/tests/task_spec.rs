//! What a service says about its containers reaches Docker: the same
//! `docker service create` flags through shoal's CLI and through the stock
//! docker CLI (the Engine API), checked with `docker inspect` of the
//! containers each one made.

use std::time::Duration;

use serde_json::{json, Value};
use tests::{
    busybox_image, containers_with_label, docker, docker_clients, require_docker, wait_for, Cluster, EngineCli,
};

const CONVERGE: Duration = Duration::from_secs(60);

/// The flags, as both CLIs take them.
fn flags(name: &str) -> Vec<String> {
    [
        "--name",
        name,
        "--replicas",
        "1",
        "--hostname",
        "{{.Service.Name}}-{{.Task.Slot}}-{{.Node.Hostname}}",
        "--user",
        "1000:1000",
        "--group",
        "29",
        "--workdir",
        "/bin",
        "--tty",
        "--init",
        "--read-only",
        "--stop-signal",
        "SIGINT",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "MKNOD",
        "--sysctl",
        "net.core.somaxconn=1024",
        "--dns",
        "10.0.0.2",
        "--dns-search",
        "example.org",
        "--dns-option",
        "ndots:2",
        "--host",
        "db:10.0.0.9",
        "--container-label",
        "team=a",
        "--limit-cpu",
        "0.5",
        "--limit-memory",
        "64MiB",
        "--limit-pids",
        "50",
        "--env",
        "WHO={{.Service.Name}}.{{.Task.Slot}}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The one running container of `name`, inspected.
fn inspect(name: &str) -> Value {
    let id = wait_for(CONVERGE, &format!("a running container of {name}"), || {
        let rows: Vec<_> =
            containers_with_label("shoal.service.name", name).into_iter().filter(|r| r.state == "running").collect();
        match rows.as_slice() {
            [one] => Ok(one.id.clone()),
            other => Err(format!("{} running", other.len())),
        }
    });
    let out = docker(&["inspect", &id]).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v[0].clone()
}

fn assert_applied(c: &Value, name: &str) {
    let cfg = &c["Config"];
    let host = &c["HostConfig"];
    assert_eq!(cfg["Hostname"], format!("{name}-1-node1"), "hostname template");
    assert_eq!(cfg["User"], "1000:1000");
    assert_eq!(cfg["WorkingDir"], "/bin");
    assert_eq!(cfg["Tty"], true);
    assert_eq!(cfg["StopSignal"], "SIGINT");
    assert_eq!(cfg["Labels"]["team"], "a");
    assert!(cfg["Env"].as_array().unwrap().contains(&json!(format!("WHO={name}.1"))), "env template: {}", cfg["Env"]);
    assert_eq!(host["Init"], true);
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["GroupAdd"], json!(["29"]));
    // The docker CLI writes capabilities as CAP_NET_ADMIN; Docker takes both.
    let caps = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|c| c.as_str().unwrap().trim_start_matches("CAP_").to_string()).collect()
    };
    assert_eq!(caps(&host["CapAdd"]), ["NET_ADMIN"]);
    assert_eq!(caps(&host["CapDrop"]), ["MKNOD"]);
    assert_eq!(host["Sysctls"], json!({"net.core.somaxconn": "1024"}));
    assert_eq!(host["Dns"], json!(["10.0.0.2"]));
    assert_eq!(host["DnsSearch"], json!(["example.org"]));
    assert_eq!(host["DnsOptions"], json!(["ndots:2"]));
    assert_eq!(host["ExtraHosts"], json!(["db:10.0.0.9"]));
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["Memory"], 64 * 1024 * 1024);
    assert_eq!(host["PidsLimit"], 50);
}

#[test]
fn container_options_and_limits_reach_docker_through_both_clis() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    let mut args: Vec<String> = vec!["service".into(), "create".into(), "-d".into()];
    args.extend(flags("opts"));
    args.extend([busybox_image().to_string(), "sleep".into(), "100000".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.shoal_ok(&refs);
    assert_applied(&inspect("opts"), "opts");

    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    let d = EngineCli::new(&bin, &format!("tcp://{}", c.api_addr(1)));
    let mut args: Vec<String> = vec!["service".into(), "create".into(), "-d".into(), "--no-resolve-image".into()];
    args.extend(flags("dopts"));
    args.extend([busybox_image().to_string(), "sleep".into(), "100000".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.run(&refs);
    assert!(out.success(), "{out}");
    assert!(!out.stderr.contains("shoal does not act on"), "every flag is acted on: {out}");
    assert_applied(&inspect("dopts"), "dopts");

    // Bad values get the flag's name and a non-zero exit; nothing is made.
    c.shoal_fails(&["service", "create", "--limit-memory", "lots", busybox_image()], "--limit-memory");
    c.shoal_fails(&["service", "create", "--host", "nocolon", busybox_image()], "--host");
    let ls = c.shoal_ok(&["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 2, "{ls}");
}

/// `docker exec` in a container: its stdout, or its output on failure.
fn exec(id: &str, script: &str) -> Result<String, String> {
    let out = docker(&["exec", id, "sh", "-c", script]);
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(out.to_string())
    }
}

#[test]
fn bind_volume_and_tmpfs_mounts_are_what_the_process_sees() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    let dir = c.dir().join("bound");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello"), "from the node\n").unwrap();
    let volume = format!("shoal-vol-{}", std::process::id());
    let bind = format!("type=bind,source={},target=/data,readonly", dir.display());
    let vol = format!("type=volume,source={volume}-{{{{.Task.Slot}}}},target=/v,volume-label=made-by=shoal-test");
    c.create_service(
        "mnt",
        &["-d", "--mount", &bind, "--mount", &vol, "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1770"],
        &["sleep", "100000"],
    );
    let id = inspect("mnt")["Id"].as_str().unwrap().to_string();
    assert_eq!(exec(&id, "cat /data/hello").unwrap(), "from the node\n");
    assert!(exec(&id, "touch /data/new").is_err(), "read-only bind mount");
    exec(&id, "echo kept > /v/file").unwrap();
    // The named volume was made on the node, template expanded, labelled.
    let vi = docker(&["volume", "inspect", &format!("{volume}-1")]).ok();
    let vi: Value = serde_json::from_str(&vi.stdout).unwrap();
    assert_eq!(vi[0]["Labels"]["made-by"], "shoal-test");
    let tmpfs = exec(&id, "grep ' /t ' /proc/mounts").unwrap();
    assert!(
        tmpfs.starts_with("tmpfs /t tmpfs") && tmpfs.contains("size=1024k") && tmpfs.contains("mode=1770"),
        "{tmpfs}"
    );

    // --mount-rm by target, --mount-add: the next container sees the change,
    // and the volume's data outlives the first one.
    c.shoal_ok(&["service", "update", "--mount-rm", "/t", "--mount-add", "type=tmpfs,target=/u", "mnt"]);
    let id2 = wait_for(CONVERGE, "the updated container running", || {
        let rows: Vec<_> =
            containers_with_label("shoal.service.name", "mnt").into_iter().filter(|r| r.state == "running").collect();
        match rows.as_slice() {
            [one] if one.id != id => Ok(one.id.clone()),
            other => Err(format!("{} running", other.len())),
        }
    });
    assert_eq!(exec(&id2, "cat /v/file").unwrap(), "kept\n");
    assert!(exec(&id2, "grep ' /t ' /proc/mounts").is_err(), "/t is gone");
    assert!(exec(&id2, "grep ' /u ' /proc/mounts").unwrap().starts_with("tmpfs /u tmpfs"));
    assert_eq!(exec(&id2, "cat /data/hello").unwrap(), "from the node\n");

    // Docker's words for a bad mount, before anything is written.
    let bad = c.shoal(&["service", "create", "--mount", "type=tmpfs,source=x,target=/t", busybox_image()]);
    assert!(
        bad.stderr.contains(
            "invalid argument \"type=tmpfs,source=x,target=/t\" for \"--mount\" flag: invalid mount config for type \"tmpfs\": field Source must not be specified"
        ),
        "{bad}"
    );
    let bad = c.shoal(&["service", "update", "--mount-add", "type=bind,target=/x,volume-nocopy", "mnt"]);
    assert!(bad.stderr.contains("cannot mix 'volume-*' options with mount type 'bind'"), "{bad}");
    let ls = c.shoal_ok(&["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
    drop(c);
    docker(&["volume", "rm", "-f", &format!("{volume}-1")]);
}

/// The running container of `svc` other than `not`, once there is one.
fn running_other_than(svc: &str, not: &str) -> String {
    wait_for(CONVERGE, &format!("a new running container of {svc}"), || {
        let rows: Vec<_> =
            containers_with_label("shoal.service.name", svc).into_iter().filter(|r| r.state == "running").collect();
        match rows.as_slice() {
            [one] if one.id != not => Ok(one.id.clone()),
            other => Err(format!("{} running", other.len())),
        }
    })
}

/// The soft and hard open-files limits of a container's PID 1, as the
/// kernel reports them in /proc/1/limits.
fn nofile_of_pid1(id: &str) -> (u64, u64) {
    let limits = exec(id, "cat /proc/1/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_else(|| panic!("{limits}"));
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (nums[0], nums[1])
}

#[test]
fn env_files_ulimits_log_drivers_and_update_add_rm_flags_reach_the_container() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    let env_file = c.dir().join("svc.env");
    std::fs::write(&env_file, "# settings\nFROM_FILE=yes\n\n  SPACED=ok\n").unwrap();
    let env_file = env_file.display().to_string();
    c.create_service(
        "lim",
        &[
            "-d",
            "--env-file",
            &env_file,
            "--env",
            "FROM_FLAG=1",
            "--ulimit",
            "nofile=1024:2048",
            "--log-driver",
            "json-file",
            "--log-opt",
            "max-size=1m",
            "--container-label",
            "a=1",
        ],
        &["sleep", "100000"],
    );
    let first = inspect("lim");
    let id = first["Id"].as_str().unwrap().to_string();
    assert_eq!(exec(&id, "echo $FROM_FILE $SPACED $FROM_FLAG").unwrap(), "yes ok 1\n");
    // The task's own process (PID 1), not a `docker exec` beside it: what
    // an exec'd shell inherits is the engine's business.
    assert_eq!(nofile_of_pid1(&id), (1024, 2048), "{}", first["HostConfig"]["Ulimits"]);
    assert_eq!(first["HostConfig"]["LogConfig"], json!({"Type": "json-file", "Config": {"max-size": "1m"}}));
    assert_eq!(first["Config"]["Labels"]["a"], "1");

    c.shoal_ok(&[
        "service",
        "update",
        "--container-label-add",
        "b=2",
        "--container-label-rm",
        "a",
        "--ulimit-add",
        "nofile=512:1024",
        "--dns-add",
        "10.0.0.3",
        "--host-add",
        "db:10.0.0.9",
        "--sysctl-add",
        "net.core.somaxconn=512",
        "--cap-add",
        "NET_ADMIN",
        "lim",
    ]);
    let id2 = running_other_than("lim", &id);
    let second = inspect("lim");
    assert_eq!(second["Id"], id2.as_str());
    assert_eq!(second["HostConfig"]["Ulimits"], json!([{"Name": "nofile", "Soft": 512, "Hard": 1024}]));
    assert_eq!(nofile_of_pid1(&id2), (512, 1024));
    assert_eq!(second["Config"]["Labels"]["b"], "2");
    assert!(second["Config"]["Labels"].get("a").is_none(), "{}", second["Config"]["Labels"]);
    assert_eq!(second["HostConfig"]["Dns"], json!(["10.0.0.3"]));
    assert_eq!(second["HostConfig"]["ExtraHosts"], json!(["db:10.0.0.9"]));
    assert_eq!(second["HostConfig"]["Sysctls"], json!({"net.core.somaxconn": "512"}));
    assert_eq!(second["HostConfig"]["CapAdd"], json!(["NET_ADMIN"]));

    // Docker's words for bad values; nothing is made or changed.
    let bad = c.shoal(&["service", "create", "--ulimit", "nofile=x", busybox_image()]);
    assert!(
        bad.stderr.contains(
            "invalid argument \"nofile=x\" for \"--ulimit\" flag: strconv.ParseInt: parsing \"x\": invalid syntax"
        ),
        "{bad}"
    );
    let bad = c.shoal(&["service", "create", "--ulimit", "nofile=2048:1024", busybox_image()]);
    assert!(bad.stderr.contains("ulimit soft limit must be less than or equal to hard limit: 2048 > 1024"), "{bad}");
    let bad = c.shoal(&["service", "create", "--env-file", "/nonexistent.env", busybox_image()]);
    assert!(bad.stderr.contains("open /nonexistent.env: no such file or directory"), "{bad}");
    let bad = c.shoal(&["service", "update", "--ulimit-add", "bogus=1", "lim"]);
    assert!(
        bad.stderr.contains("invalid argument \"bogus=1\" for \"--ulimit-add\" flag: invalid ulimit type: bogus"),
        "{bad}"
    );
    let ls = c.shoal_ok(&["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "{ls}");
}

#[test]
fn update_single_value_flags_and_a_memory_reservation_reach_the_new_container() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    c.create_service(
        "single",
        &["-d", "--hostname", "first", "--reserve-memory", "32MiB", "--stop-grace-period", "1s"],
        &["sleep", "100000"],
    );
    let old = inspect("single");
    assert_eq!(old["Config"]["Hostname"], "first");
    assert_eq!(old["HostConfig"]["MemoryReservation"], 32 << 20, "Swarm's soft limit");
    let old_id = old["Id"].as_str().unwrap().to_string();
    c.shoal_ok(&[
        "service",
        "update",
        "-d",
        "--hostname",
        "second",
        "--user",
        "65534",
        "--workdir",
        "/tmp",
        "--read-only",
        "--stop-signal",
        "SIGINT",
        "--limit-memory",
        "64MiB",
        "--limit-pids",
        "50",
        "single",
    ]);
    let id = running_other_than("single", &old_id);
    let out = docker(&["inspect", &id]).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let new = &v[0];
    assert_eq!(new["Config"]["Hostname"], "second");
    assert_eq!(new["Config"]["User"], "65534");
    assert_eq!(new["Config"]["WorkingDir"], "/tmp");
    assert_eq!(new["Config"]["StopSignal"], "SIGINT");
    assert_eq!(new["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(new["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(new["HostConfig"]["PidsLimit"], 50);
    assert_eq!(exec(&id, "id -u").unwrap().trim(), "65534", "what the process sees");
    // Unset again: an empty hostname and a zero limit, as in docker.
    c.shoal_ok(&["service", "update", "-d", "--hostname", "", "--limit-memory", "0", "--read-only=false", "single"]);
    let third = running_other_than("single", &id);
    let out = docker(&["inspect", &third]).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_ne!(v[0]["Config"]["Hostname"], "second");
    assert_eq!(v[0]["HostConfig"]["Memory"], 0);
    assert_eq!(v[0]["HostConfig"]["ReadonlyRootfs"], false);
    c.shoal_fails(
        &["service", "update", "--limit-pids", "many", "single"],
        "invalid argument \"many\" for \"--limit-pids\" flag",
    );
}

/// The error of the newest task of `svc` once it has failed.
fn failed_err(c: &tests::Cluster, svc: &str) -> String {
    wait_for(CONVERGE, &format!("a failed task of {svc}"), || {
        let tasks = c.service_tasks(svc);
        let failed = tasks.as_array().into_iter().flatten().find(|t| tests::task_state(t) == "failed");
        match failed.and_then(|t| t["status"]["err"].as_str()) {
            Some(e) => Ok(e.to_string()),
            None => Err(tasks.to_string()),
        }
    })
}

#[test]
fn isolation_and_credential_specs_reach_docker_as_swarm_passes_them() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(1);
    // Refused with docker's words before anything is written.
    let img = busybox_image();
    c.shoal_fails(
        &["service", "create", "--isolation", "vm", img],
        "invalid argument \"vm\" for \"--isolation\" flag: invalid isolation: expected \"default\", \"process\" or \"hyperv\"",
    );
    c.shoal_fails(
        &["service", "create", "--credential-spec", "spec.json", img],
        "invalid argument \"spec.json\" for \"--credential-spec\" flag: invalid credential spec: value must be prefixed with \"config://\", \"file://\", or \"registry://\"",
    );
    c.shoal_fails(
        &["service", "create", "--credential-spec", "file://", img],
        "invalid CredentialSpec: must either provide \"file\", \"registry\", or \"config\" for credential spec",
    );
    assert_eq!(c.shoal_ok(&["service", "ls", "-q"]), "", "nothing made");

    // `default` is Docker's HostConfig.Isolation of the task's container.
    c.create_service("iso", &["-d", "--isolation", "DEFAULT"], &["sleep", "100000"]);
    let first = inspect("iso");
    assert_eq!(first["HostConfig"]["Isolation"], "default");
    let spec = c.shoal_json(&["service", "inspect", "iso"]);
    assert_eq!(spec[0]["spec"]["task"]["container"]["isolation"], "default", "{spec}");
    c.shoal_fails(
        &["service", "update", "--isolation", "vm", "iso"],
        "invalid argument \"vm\" for \"--isolation\" flag",
    );
    // Linux runs only `default`: Docker refuses the others, and the task
    // fails with Docker's words, as under Swarm.
    c.shoal_ok(&["service", "update", "-d", "--isolation", "process", "iso"]);
    let err = failed_err(&c, "iso");
    assert!(err.contains("Invalid isolation: \"process\" - linux only supports 'default'"), "{err}");

    // A credential spec becomes Swarm's security option, which Docker on
    // Linux refuses: the task fails with that, in `service ps`.
    c.create_service("gmsa", &["-d", "--credential-spec", "file://spec.json"], &["sleep", "100000"]);
    let spec = c.shoal_json(&["service", "inspect", "gmsa"]);
    assert_eq!(spec[0]["spec"]["task"]["container"]["credential_spec"], json!({"file": "spec.json"}), "{spec}");
    let err = failed_err(&c, "gmsa");
    assert!(err.contains("invalid --security-opt 2: \"credentialspec=file://spec.json\""), "{err}");
    let ps = c.shoal_ok(&["service", "ps", "--no-trunc", "gmsa"]);
    assert!(ps.contains("credentialspec=file://spec.json"), "{ps}");
    // `""` removes it, as in docker: the next task runs.
    c.shoal_fails(&["service", "update", "--credential-spec", "x", "gmsa"], "invalid credential spec");
    c.shoal_ok(&["service", "update", "-d", "--credential-spec", "", "gmsa"]);
    c.wait_running("gmsa", 1, CONVERGE);
    let spec = c.shoal_json(&["service", "inspect", "gmsa"]);
    assert!(spec[0]["spec"]["task"]["container"].get("credential_spec").is_none(), "{spec}");

    // The stock docker CLI's flags land the same, and inspect returns them.
    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    let d = EngineCli::new(&bin, &format!("tcp://{}", c.api_addr(1)));
    let out = d.run(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "diso",
        "--isolation",
        "default",
        "--credential-spec",
        "registry://HKLM\\gmsa",
        img,
        "sleep",
        "100000",
    ]);
    assert!(out.success(), "{out}");
    let cs = d.ok(&["service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec}}", "diso"]);
    let cs: Value = serde_json::from_str(cs.trim()).unwrap();
    assert_eq!(cs["Isolation"], "default", "{cs}");
    assert_eq!(cs["Privileges"]["CredentialSpec"]["Registry"], "HKLM\\gmsa", "{cs}");
    let err = failed_err(&c, "diso");
    // Docker quotes it Go's way (`HKLM\\gmsa`).
    assert!(err.contains("invalid --security-opt 2: \"credentialspec=registry://HKLM\\\\gmsa\""), "{err}");
}

//! Secrets and configs as a user meets them: made with shoal's CLI (from a
//! file and from standard input) and with the stock docker CLI, mounted
//! into a task as files with their owner and mode, never shown by inspect,
//! written only on the node that runs the task (on a tmpfs), gone from it
//! when the service goes, and not removable while a service uses them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::{
    busybox_image, containers_with_label, docker, docker_clients, require_docker, run_with_timeout, shoal_bin,
    wait_for, Cluster, ClusterSpec, EngineCli,
};

const CONVERGE: Duration = Duration::from_secs(60);

/// The one running container of `name`.
fn running_container(name: &str) -> String {
    wait_for(CONVERGE, &format!("a running container of {name}"), || {
        let rows: Vec<_> =
            containers_with_label("shoal.service.name", name).into_iter().filter(|r| r.state == "running").collect();
        match rows.as_slice() {
            [one] => Ok(one.id.clone()),
            other => Err(format!("{} running", other.len())),
        }
    })
}

fn exec(id: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", id];
    args.extend(cmd);
    docker(&args).ok().stdout
}

/// The task directories a node has written files for.
fn task_dirs(node_id: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from("/dev/shm/shoal").join(node_id);
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[test]
fn secrets_and_configs_become_files_in_the_task_and_nowhere_else() {
    if !require_docker() {
        return;
    }
    let c = Cluster::start(ClusterSpec::new(1, 1));
    let (manager_id, worker_id) = (c.node_id(1), c.node_id(2));
    let value = format!("hunter2-{}", std::process::id());
    // From standard input, as `docker secret create NAME -`.
    let script =
        format!("printf %s '{value}' | '{}' -H {} secret create db_pw -", shoal_bin().display(), c.api_addr(1));
    let made = run_with_timeout(Command::new("sh").arg("-c").arg(&script), Duration::from_secs(20)).unwrap();
    assert!(made.success(), "{made}");
    let conf = c.dir().join("app.conf");
    std::fs::write(&conf, "listen 8080\n").unwrap();
    c.shoal_ok(&["config", "create", "-l", "team=a", "app_conf", conf.to_str().unwrap()]);

    // Bad input: docker's words, a non-zero exit, nothing made.
    c.shoal_fails(
        &["service", "create", "--secret", "source=db_pw,colour=red", busybox_image()],
        "invalid argument \"source=db_pw,colour=red\" for \"--secret\" flag: invalid field in secret request: colour",
    );
    c.shoal_fails(&["service", "create", "--secret", "nope", busybox_image()], "secret not found: nope");
    c.shoal_fails(&["secret", "create", "bad name", conf.to_str().unwrap()], "invalid name, only 64");
    c.shoal_fails(&["secret", "create", "db_pw", conf.to_str().unwrap()], "secret db_pw already exists");
    assert_eq!(c.shoal_ok(&["service", "ls", "-q"]), "");

    c.shoal_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--constraint",
        "node.role==worker",
        "--secret",
        "db_pw",
        "--secret",
        "source=db_pw,target=/etc/pw,uid=1000,gid=1001,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    let id = running_container("app");
    assert_eq!(exec(&id, &["cat", "/run/secrets/db_pw"]), value);
    assert_eq!(exec(&id, &["stat", "-c", "%a %u %g", "/etc/pw"]).trim(), "400 1000 1001");
    assert_eq!(exec(&id, &["stat", "-c", "%a", "/run/secrets/db_pw"]).trim(), "444", "docker's default mode");
    assert_eq!(exec(&id, &["cat", "/etc/app.conf"]), "listen 8080\n");
    // Mounted read-only from the node's tmpfs.
    assert!(!docker(&["exec", &id, "sh", "-c", "echo x > /run/secrets/db_pw"]).success(), "read-only");
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &id]).ok().stdout).unwrap();
    let sources: Vec<&str> =
        inspect[0]["Mounts"].as_array().unwrap().iter().filter_map(|m| m["Source"].as_str()).collect();
    assert_eq!(sources.len(), 3, "{sources:?}");
    let tmpfs_dir = format!("/dev/shm/shoal/{worker_id}/");
    assert!(sources.iter().all(|s| s.starts_with(&tmpfs_dir)), "{sources:?}");
    assert!(task_dirs(&manager_id).is_empty(), "the manager runs no task that uses it: {:?}", task_dirs(&manager_id));

    // Never shown: not by service inspect, not by secret inspect or ls.
    for args in [
        &["service", "inspect", "app"][..],
        &["secret", "inspect", "db_pw"],
        &["secret", "ls", "--format", "json"],
        &["service", "ps", "app", "--format", "json"],
    ] {
        let out = c.shoal_ok(args);
        assert!(!out.contains(&value), "{args:?} shows the value: {out}");
    }
    let s = c.shoal_json(&["secret", "inspect", "db_pw"]);
    assert_eq!(s[0]["services"], serde_json::json!(["app"]));
    assert!(s[0].get("data").is_none());
    assert!(c.shoal_ok(&["secret", "ls"]).contains("db_pw"));
    let pretty = c.shoal_ok(&["config", "inspect", "--pretty", "app_conf"]);
    assert!(pretty.contains("listen 8080"), "a config's value may be read back: {pretty}");

    // In use: refused, naming the service.
    c.shoal_fails(&["secret", "rm", "db_pw"], "secret 'db_pw' is in use by the following service: app");
    c.shoal_fails(&["config", "rm", "app_conf"], "config 'app_conf' is in use by the following service: app");

    // The stock docker CLI sees and manages them through the Engine API.
    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    let d = EngineCli::new(&bin, &format!("tcp://{}", c.api_addr(1)));
    assert!(d.ok(&["secret", "ls", "--format", "{{.Name}}"]).contains("db_pw"));
    let file = c.dir().join("token");
    std::fs::write(&file, "s3cr3t-token").unwrap();
    let sid = d.ok(&["secret", "create", "--label", "x=y", "token", file.to_str().unwrap()]);
    let seen = d.ok(&["secret", "inspect", "token"]);
    assert!(seen.contains(sid.trim()) && seen.contains("\"x\": \"y\""), "{seen}");
    assert!(!seen.contains("s3cr3t-token") && !seen.contains("czNjcjN0LXRva2Vu"), "{seen}");
    assert!(d.ok(&["config", "inspect", "--pretty", "app_conf"]).contains("listen 8080"));
    d.fails(&["secret", "rm", "db_pw"], "in use by the following service: app");
    // A service made by the docker CLI, which resolves the name to an id.
    let out = d.run(&[
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        "dsvc",
        "--secret",
        "source=token,target=tok,mode=0440",
        busybox_image(),
        "sleep",
        "100000",
    ]);
    assert!(out.success() && !out.stderr.contains("shoal does not act on"), "{out}");
    let did = running_container("dsvc");
    assert_eq!(exec(&did, &["cat", "/run/secrets/tok"]), "s3cr3t-token");
    assert_eq!(exec(&did, &["stat", "-c", "%a", "/run/secrets/tok"]).trim(), "440");
    let dspec = d.ok(&["service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}", "dsvc"]);
    assert!(dspec.contains("\"SecretName\":\"token\"") && dspec.contains(sid.trim()), "{dspec}");
    d.ok(&["service", "rm", "dsvc"]);
    d.ok(&["secret", "rm", "token"]);
    assert!(!c.shoal_ok(&["secret", "ls"]).contains("token"));

    // Update: take the second reference away, then the service.
    c.shoal_ok(&["service", "update", "-d", "--secret-rm", "db_pw", "app"]);
    let svc = c.shoal_json(&["service", "inspect", "app"]);
    assert!(svc[0]["spec"]["task"].get("secrets").is_none(), "{}", svc[0]["spec"]["task"]);
    c.shoal_ok(&["service", "rm", "app"]);
    wait_for(CONVERGE, "the worker's task files gone", || match task_dirs(&worker_id).as_slice() {
        [] => Ok(()),
        left => Err(format!("{left:?}")),
    });
    c.shoal_ok(&["secret", "rm", "db_pw"]);
    c.shoal_ok(&["config", "rm", "app_conf"]);
    assert_eq!(c.shoal_ok(&["secret", "ls", "-q"]), "");
}

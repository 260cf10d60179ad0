//! `--with-registry-auth`: a service's image in a registry that wants a
//! login is pulled by the node with the login the CLI had (its docker
//! config), and the login is never shown. The registry is Debian's
//! `docker-registry` (the distribution registry) on loopback with htpasswd
//! auth; the image is the test image pushed there.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::{busybox_image, docker_clients, require_docker, task_state, wait_for, Cluster, EngineCli};

const CONVERGE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "pw-5b1d9e0c7a";

/// Whether `tool` is installed; in CI its absence fails the test.
fn require_tool(tool: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(!tests::is_ci(), "{tool} is required when CI=true (deploy/install-deps.sh)");
        eprintln!("!!! SKIPPED: {tool} not found (deploy/install-deps.sh)");
    }
    found
}

/// The registry process and the image tag pushed to it: both gone on drop.
struct Registry {
    child: Child,
    image: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

/// `docker` with the docker config in `config` (the login lives there).
fn docker_as(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(args)
        .env("DOCKER_CONFIG", config)
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A registry on a free loopback port wanting `alice`'s password, holding
/// the test image (which is then removed locally); the login in `config`.
fn registry(dir: &Path, config: &Path) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let htpasswd = Command::new("htpasswd").args(["-Bbn", "alice", PASSWORD]).output().unwrap();
    assert!(htpasswd.status.success());
    std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
    let yml = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
        dir.join("data").display(),
        dir.join("htpasswd").display()
    );
    std::fs::write(dir.join("config.yml"), yml).unwrap();
    let child = Command::new("docker-registry")
        .args(["serve", &dir.join("config.yml").to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry");
    let image = format!("127.0.0.1:{port}/shoal/busybox:auth");
    let reg = Registry { child, image: image.clone() };
    wait_for(Duration::from_secs(20), "the registry to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map(drop).map_err(|e| e.to_string())
    });
    let login =
        docker_as(config, &["login", "-u", "alice", "--password-stdin", &format!("127.0.0.1:{port}")], PASSWORD);
    assert!(login.status.success(), "docker login: {}", String::from_utf8_lossy(&login.stderr));
    for args in [vec!["tag", busybox_image(), &image], vec!["push", &image], vec!["rmi", &image]] {
        let out = docker_as(config, &args, "");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!docker_as(config, &["image", "inspect", &image], "").status.success(), "not local any more");
    reg
}

/// The first task error of `svc`, once there is one.
fn task_err(c: &Cluster, svc: &str) -> String {
    wait_for(CONVERGE, &format!("a task error of {svc}"), || {
        let tasks = c.service_tasks(svc);
        let err = tasks.as_array().into_iter().flatten().find_map(|t| t["status"]["err"].as_str().map(str::to_string));
        err.filter(|e| !e.is_empty()).ok_or_else(|| {
            let states: Vec<&str> = tasks.as_array().into_iter().flatten().map(task_state).collect();
            format!("states {states:?}")
        })
    })
}

#[test]
fn with_registry_auth_the_node_pulls_with_the_clis_login_and_nothing_shows_it() {
    if !require_docker() || !require_tool("docker-registry") || !require_tool("htpasswd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let reg = registry(dir.path(), &config);
    let c = Cluster::new(1);
    let env = [("DOCKER_CONFIG", config.to_str().unwrap())];
    let create = |name: &str, flags: &[&str]| {
        let mut args = vec!["service", "create", "-d", "--name", name];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[reg.image.as_str(), "sleep", "100000"]);
        let out = c.shoal_env(&env, &args);
        assert!(out.success(), "{out}");
    };

    // Without the flag the login stays with the CLI: Docker's pull error.
    create("noauth", &[]);
    let err = task_err(&c, "noauth");
    assert!(err.contains("no basic auth credentials"), "{err}");
    c.shoal_ok(&["service", "rm", "noauth"]);

    // With it, the node pulls with alice's login and the task runs.
    create("authed", &["--with-registry-auth"]);
    c.wait_running("authed", 1, CONVERGE);

    // Never shown: shoal's inspect and ps, the Engine API's inspect.
    let auth_b64 = "YWxpY2U6"; // base64 of "alice:", the start of the config's auth
    for args in [
        vec!["service", "inspect", "authed"],
        vec!["service", "ps", "authed", "--format", "json"],
        vec!["service", "inspect", "--pretty", "authed"],
    ] {
        let out = c.shoal_ok(&args);
        assert!(
            !out.contains(PASSWORD) && !out.contains(auth_b64) && !out.contains("registry_auth"),
            "{args:?}: {out}"
        );
    }
    let bin = docker_clients().into_iter().next().expect("a docker CLI");
    let d = EngineCli::new(&bin, &format!("tcp://{}", c.api_addr(1)));
    let out = d.ok(&["service", "inspect", "authed"]);
    assert!(!out.contains(PASSWORD), "{out}");
    // At rest it is encrypted with the rest of the store.
    let grep = Command::new("grep").args(["-r", "-l", "-a", PASSWORD]).arg(c.data_dir(1)).output().unwrap();
    assert!(grep.stdout.is_empty(), "plaintext in {}", String::from_utf8_lossy(&grep.stdout));

    // The stock docker CLI sends its login in X-Registry-Auth: the same.
    let untag = || {
        let out = Command::new("docker").args(["rmi", "-f", &reg.image]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    untag();
    let out = Command::new(&bin)
        .args(["service", "create", "-d", "--no-resolve-image", "--with-registry-auth", "--name", "dauthed"])
        .args([reg.image.as_str(), "sleep", "100000"])
        .env("DOCKER_HOST", &d.host)
        .env("DOCKER_CONFIG", &config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_running("dauthed", 1, CONVERGE);
    let out = d.ok(&["service", "inspect", "dauthed"]);
    assert!(!out.contains(PASSWORD), "{out}");

    // An update without the flag keeps the login (as Swarm does): a forced
    // rollout pulls again once the image is gone.
    untag();
    let out = c.shoal_env(&env, &["service", "update", "-d", "--force", "authed"]);
    assert!(out.success(), "{out}");
    wait_for(CONVERGE, "a second running task of authed", || {
        let tasks = c.service_tasks("authed");
        let running = tasks.as_array().into_iter().flatten().filter(|t| task_state(t) == "running").count();
        let all = tasks.as_array().map_or(0, Vec::len);
        if running == 1 && all == 2 {
            Ok(())
        } else {
            Err(format!("{running} running of {all}: {tasks}"))
        }
    });

    // A CLI with no login for that registry sends none; a helper it cannot
    // run is refused with the reason, before anything is written.
    std::fs::write(config.join("config.json"), r#"{"auths":{},"credsStore":"secretservice"}"#).unwrap();
    let out = c.shoal_env(&env, &["service", "update", "--with-registry-auth", "authed"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("kept by the credential helper docker-credential-secretservice"), "{out}");
}

//! A node started in-process through the daemon library (no `shoal`
//! process, no Docker): `--init` over the fake runtime, a service created
//! through the HTTP API, its tasks running as the runtime's records, then a
//! clean stop through the launcher's shutdown future. This is the seam the
//! scale simulation builds on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cli::daemon::{run_with, DaemonArgs, Launch, Outcome};
use common::spec::{ServiceSpec, TaskTemplate};
use worker::runtime::fake::FakeRuntime;
use worker::runtime::{ContainerState, LABEL_SERVICE_NAME};

const IMAGE: &str = "shoal/in-process:1";

fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + deadline;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= until => panic!("waiting for {what}: gave up after {deadline:?}; last: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn a_node_runs_in_process_over_the_fake_runtime_and_stops_on_its_future() {
    let (subnet, _lock) = tests::claim_subnet(None, 1);
    let ip = format!("127.0.{subnet}.10");
    let api = format!("{ip}:4243");
    let dir = tempfile::tempdir().unwrap();
    let args = DaemonArgs::from_flags([
        "--init",
        "--advertise-addr",
        &ip,
        "--api-addr",
        &api,
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--hostname",
        "inproc",
        "--mesh",
        "userspace",
    ])
    .expect("flags parse");
    let runtime = Arc::new(FakeRuntime::new().with_image(IMAGE));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let launch = Launch {
        runtime: Some(runtime.clone()),
        shutdown: Some(Box::pin(async move {
            let _ = stopped.await;
        })),
        ..Default::default()
    };
    let node = std::thread::spawn(move || run_with(args, launch));

    let base = format!("http://{api}");
    wait_for(Duration::from_secs(30), "the API to answer", || {
        ureq::get(&format!("{base}/v1/info")).call().map(|_| ()).map_err(|e| e.to_string())
    });
    let spec = ServiceSpec::new("web", 3, TaskTemplate::new(IMAGE));
    let created = ureq::post(&format!("{base}/v1/services")).send_json(serde_json::to_value(&spec).unwrap());
    assert_eq!(created.map(|r| r.status()).map_err(|e| e.to_string()), Ok(201));

    // What the user sees: three running tasks; what the runtime holds: three
    // running containers labelled with the service.
    wait_for(Duration::from_secs(30), "3 running tasks of web", || {
        let tasks: serde_json::Value = ureq::get(&format!("{base}/v1/services/web/tasks"))
            .call()
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())?;
        let running =
            tasks.as_array().map(|a| a.iter().filter(|t| t["status"]["state"] == "running").count()).unwrap_or(0);
        if running == 3 {
            Ok(())
        } else {
            Err(format!("{running} running: {tasks}"))
        }
    });
    let containers: Vec<_> = runtime
        .containers()
        .into_iter()
        .filter(|c| c.labels.get(LABEL_SERVICE_NAME).map(String::as_str) == Some("web"))
        .collect();
    assert_eq!(containers.len(), 3, "{containers:?}");
    assert!(containers.iter().all(|c| c.state == ContainerState::Running), "{containers:?}");

    stop.send(()).unwrap();
    let outcome = node.join().expect("the node thread does not panic");
    assert_eq!(outcome.map_err(|e| e.to_string()), Ok(Outcome::Stopped));
    assert!(ureq::get(&format!("{base}/v1/info")).call().is_err(), "the API stopped with the node");
}

//! `--log-retention`: a task's logs stay readable through `service logs`
//! for a while after the task is removed (Swarm loses them with the
//! container): its node reads them as it removes the container, keeps them
//! for the retention, then forgets them. Real `shoal`, real Docker.

use std::time::Duration;

use tests::{containers_with_label, require_docker, wait_for, Cluster};

const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn logs_of_a_removed_task_stay_readable_for_the_retention_then_go() {
    if !require_docker() {
        return;
    }
    let c = Cluster::new(2);
    c.create_service(
        "chatty",
        &["-d", "--replicas", "2", "--log-retention", "4s", "--stop-grace-period", "1s"],
        &["sh", "-c", "echo hello-from-$(hostname); exec sleep 100000"],
    );
    c.wait_running("chatty", 2, CONVERGE);
    let lines = |c: &Cluster| c.shoal_ok(&["service", "logs", "chatty"]).matches("hello-from-").count();
    wait_for(CONVERGE, "both tasks' lines", || (lines(&c) == 2).then_some(()));

    // Scaled to nothing: the tasks are gone from the cluster...
    c.shoal_ok(&["service", "scale", "chatty=0"]);
    wait_for(CONVERGE, "no tasks left", || {
        let tasks = c.service_tasks("chatty");
        tasks.as_array().is_some_and(Vec::is_empty).then_some(()).ok_or(tasks.to_string())
    });
    // ...their containers removed as before...
    wait_for(CONVERGE, "their containers removed", || {
        let ctrs = containers_with_label("shoal.service.name", "chatty");
        ctrs.is_empty().then_some(()).ok_or(format!("{ctrs:?}"))
    });
    // ...and their logs still there, named by task as before.
    let out = c.shoal_ok(&["service", "logs", "chatty"]);
    assert_eq!(out.matches("hello-from-").count(), 2, "{out}");
    assert!(out.contains("chatty.1") && out.contains("chatty.2"), "{out}");

    // After the retention the nodes forget them.
    wait_for(CONVERGE, "the kept logs gone", || {
        let n = lines(&c);
        (n == 0).then_some(()).ok_or(format!("{n} lines"))
    });
}

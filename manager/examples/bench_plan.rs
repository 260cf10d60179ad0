//! Placements per second of the scheduler's plan: the indexed one
//! (`plan::plan`) beside the scan it replaced (`plan::plan_scan`), on
//! clusters of 1,000 and 5,000 nodes with 100,000 new tasks in 100
//! services, as they are after `service create` of each (issue 15's C1M
//! goal: a million tasks in five minutes).
//!
//! `cargo run --release -p manager --example bench_plan [-- --quick]`
//!
//! The scan is timed on the first services only (it takes minutes for all
//! of them); both plans are checked to give the same placements there.

use std::collections::BTreeMap;
use std::time::Instant;

use common::constraint::Constraint;
use common::node::{Availability, Node, Role};
use common::sched::{NodeDescription, Resources, Spread};
use common::spec::{ServiceSpec, TaskTemplate};
use common::task::{Task, TaskState, TaskStatus};
use common::TaskId;
use manager::scheduler::plan::{plan, plan_scan, NodeView, RecentFailures};

const ZONES: &[&str] = &["a", "b", "c"];

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            id: format!("node{i:05}").as_str().into(),
            raft_id: i as u64 + 1,
            hostname: format!("host{i}"),
            role: if i < 3 { Role::Manager } else { Role::Worker },
            availability: Availability::Active,
            labels: [("zone".to_string(), ZONES[i % ZONES.len()].to_string())].into(),
            addr: "127.0.0.1:4242".parse().expect("an address"),
            created_at: 0,
            updated_at: 0,
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Config {
    Plain,
    /// `node.labels.zone==a`: a third of the nodes.
    Constraint,
    /// Each service publishes its own host-mode port.
    HostPort,
    /// `--placement-pref spread=node.labels.zone` and a reservation of
    /// a tenth of a CPU and 64 MiB.
    SpreadReserve,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Plain => "no constraint",
            Config::Constraint => "constraint zone==a",
            Config::HostPort => "host-mode port",
            Config::SpreadReserve => "spread zone + reserve",
        }
    }

    fn template(self, service: usize) -> TaskTemplate {
        let mut t = TaskTemplate::new("shoal/busybox:latest");
        match self {
            Config::Plain => {}
            Config::Constraint => t.constraints = vec![Constraint::parse("node.labels.zone==a").expect("valid")],
            Config::HostPort => {
                t.ports = vec![format!("published={},target=80,mode=host", 9000 + service).parse().expect("valid")]
            }
            Config::SpreadReserve => {
                t.scheduling.preferences = vec![Spread("node.labels.zone".into())];
                t.scheduling.reservations =
                    Resources { nano_cpus: 100_000_000, memory_bytes: 64 << 20, ..Default::default() };
            }
        }
        t
    }
}

fn tasks(config: Config, services: usize, per_service: usize) -> BTreeMap<TaskId, Task> {
    let mut out = BTreeMap::new();
    for s in 0..services {
        let name = format!("svc{s:03}");
        let spec = ServiceSpec::new(&name, per_service as u64, config.template(s));
        for slot in 1..=per_service as u64 {
            let t = Task {
                id: format!("{name}.{slot}").as_str().into(),
                service_id: name.as_str().into(),
                service_name: name.clone(),
                slot,
                node_id: None,
                spec: spec.task.clone(),
                desired_state: TaskState::Running,
                status: TaskStatus::new(TaskState::New, 0, "created"),
                created_at: 0,
                attempt: 0,
                addresses: vec![],
                job_iteration: None,
            };
            out.insert(t.id.clone(), t);
        }
    }
    out
}

/// Placements per second of one call of `f`, and the plan it made.
fn rate<T>(placed: impl Fn(&T) -> usize, f: impl FnOnce() -> T) -> (f64, T) {
    let start = Instant::now();
    let out = f();
    let secs = start.elapsed().as_secs_f64();
    (placed(&out) as f64 / secs, out)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (services, per_service) = if quick { (10, 1_000) } else { (100, 1_000) };
    let description = NodeDescription {
        resources: Resources { nano_cpus: 64_000_000_000, memory_bytes: 256 << 30, ..Default::default() },
        os: "linux".into(),
        arch: "x86_64".into(),
        ..Default::default()
    };
    let failures = RecentFailures::default();
    println!(
        "{:>6}  {:<22} {:>8} {:>14}   {:>8} {:>14} {:>14}   {:>8}",
        "nodes", "config", "tasks", "scan/s", "tasks", "indexed/s", "(same tasks)", "speed-up"
    );
    for n in [1_000, 5_000] {
        let ns = nodes(n);
        let views: Vec<NodeView> =
            ns.iter().map(|node| NodeView::new(node, true).described(Some(&description))).collect();
        for config in [Config::Plain, Config::Constraint, Config::HostPort, Config::SpreadReserve] {
            // The scan on about ten seconds' worth of work at its old rate.
            let scan_services = (10_000_000 / (n * per_service)).clamp(1, services);
            let few = tasks(config, scan_services, per_service);
            let (scan_rate, scan_plan) = rate(|p: &_| placed(p), || plan_scan(&views, &few, &failures));
            let (same_rate, same_plan) = rate(|p: &_| placed(p), || plan(&views, &few, &failures));
            assert_eq!(same_plan, scan_plan, "the indexed plan differs from the scan");
            let all = tasks(config, services, per_service);
            let (indexed_rate, indexed_plan) = rate(|p: &_| placed(p), || plan(&views, &all, &failures));
            println!(
                "{:>6}  {:<22} {:>8} {:>14.0}   {:>8} {:>14.0} {:>14.0}   {:>7.0}x",
                n,
                config.name(),
                few.len(),
                scan_rate,
                all.len(),
                indexed_rate,
                same_rate,
                indexed_rate / scan_rate
            );
            if indexed_plan.assign.len() != all.len() {
                println!(
                    "        ({} of {} placed, {} unplaceable)",
                    indexed_plan.assign.len(),
                    all.len(),
                    indexed_plan.unplaceable.len()
                );
            }
        }
        // Many small services: candidates are built once per service.
        let all = tasks(Config::Plain, services * 100, per_service / 100);
        let (indexed_rate, _) = rate(|p: &_| placed(p), || plan(&views, &all, &failures));
        println!(
            "{:>6}  {:<22} {:>8} {:>14}   {:>8} {:>14.0}",
            n,
            format!("{} services x {}", services * 100, per_service / 100),
            "",
            "",
            all.len(),
            indexed_rate
        );
    }
}

fn placed(p: &manager::scheduler::plan::Plan) -> usize {
    p.assign.len() + p.unplaceable.len()
}

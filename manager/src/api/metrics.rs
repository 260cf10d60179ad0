//! `/metrics`: OpenMetrics text, the store's counts on a manager.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use common::task::TaskState;
use worker::node::metrics::metrics;

use super::ApiState;

pub(super) async fn metrics_text(state: web::Data<ApiState>) -> HttpResponse {
    let m = metrics();
    m.gauge("shoal_gossip_live_members", "nodes seen alive through gossip").set(state.live.borrow().len() as i64);
    if let Some(mgr) = &state.manager {
        let store = mgr.store.read();
        let mut counts: BTreeMap<TaskState, i64> = TaskState::ALL.iter().map(|s| (*s, 0)).collect();
        for t in store.tasks.values() {
            *counts.entry(t.status.state).or_default() += 1;
        }
        let fam = m.gauge_family("shoal_tasks", "tasks in the store by current state", "state");
        for (s, n) in counts {
            fam.set(s.as_str(), n);
        }
        m.gauge("shoal_services", "services in the store").set(store.services.len() as i64);
        m.gauge("shoal_nodes", "nodes in the store").set(store.nodes.len() as i64);
    }
    HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(m.render())
}

//! Process-wide metrics (prometheus-client), rendered as OpenMetrics text for
//! the `/metrics` endpoint.
//!
//! Every actor gets the same five series, labelled `actor="<name>"`:
//! `shoal_actor_messages_total`, `shoal_actor_errors_total`,
//! `shoal_actor_restarts_total`, `shoal_actor_mailbox_depth` and the
//! `shoal_actor_handle_seconds` histogram. Other subsystems register plain
//! gauges (`shoal_raft_term`), one-label gauge families
//! (`shoal_tasks{state="running"}`) or one-label counter families
//! (`shoal_cluster_connections_refused_total{reason="handshake_full"}`) by
//! name; registration is idempotent, so callers just ask for the metric
//! wherever they need it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type ActorLabels = [(&'static str, &'static str); 1];
type HistogramFamily = Family<ActorLabels, Histogram, fn() -> Histogram>;

/// Latency buckets from 10 µs to 10 s in 1-2.5-5 steps, written out so the
/// `le` labels read cleanly (`exponential_buckets` gives `0.0010000000000000005`).
const HANDLE_SECONDS_BUCKETS: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

fn handle_seconds_histogram() -> Histogram {
    Histogram::new(HANDLE_SECONDS_BUCKETS)
}

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A registry plus the actor metric families. Use [`metrics()`]; `new` exists
/// for tests that want a registry of their own.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Gauges and gauge families registered by name, so asking twice returns
    /// the same metric instead of registering a duplicate.
    named: Mutex<HashMap<&'static str, Named>>,
    messages: Family<ActorLabels, Counter>,
    errors: Family<ActorLabels, Counter>,
    restarts: Family<ActorLabels, Counter>,
    mailbox_depth: Family<ActorLabels, Gauge>,
    handle_seconds: HistogramFamily,
}

enum Named {
    Gauge(Gauge),
    Family(GaugeFamily),
    Counters(CounterFamily),
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let messages = Family::<ActorLabels, Counter>::default();
        let errors = Family::<ActorLabels, Counter>::default();
        let restarts = Family::<ActorLabels, Counter>::default();
        let mailbox_depth = Family::<ActorLabels, Gauge>::default();
        let handle_seconds: HistogramFamily =
            Family::new_with_constructor(handle_seconds_histogram as fn() -> Histogram);

        let mut registry = Registry::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register("shoal_actor_messages", "Messages handled by an actor", messages.clone());
        registry.register("shoal_actor_errors", "Messages an actor failed to handle", errors.clone());
        registry.register(
            "shoal_actor_restarts",
            "Times an actor (or what it supervises) was restarted",
            restarts.clone(),
        );
        registry.register(
            "shoal_actor_mailbox_depth",
            "Messages sent to an actor and not yet handled",
            mailbox_depth.clone(),
        );
        registry.register_with_unit(
            "shoal_actor_handle",
            "Time an actor took to handle one message",
            Unit::Seconds,
            handle_seconds.clone(),
        );

        Self {
            registry: Mutex::new(registry),
            named: Mutex::new(HashMap::new()),
            messages,
            errors,
            restarts,
            mailbox_depth,
            handle_seconds,
        }
    }

    /// The metrics of one actor. Cheap to clone; keep one in the actor and one
    /// in each sender rather than calling this per message.
    pub fn actor(&self, name: &'static str) -> ActorMetrics {
        let labels = [("actor", name)];
        ActorMetrics {
            messages: self.messages.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
            restarts: self.restarts.get_or_create(&labels).clone(),
            mailbox_depth: self.mailbox_depth.get_or_create(&labels).clone(),
            handle_seconds: self.handle_seconds.get_or_create(&labels).clone(),
        }
    }

    /// A gauge registered under `name` (e.g. `shoal_raft_term`). Asking again
    /// for the same name returns the same gauge; the first `help` wins.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        let mut named = self.named.lock();
        match named.get(name) {
            Some(Named::Gauge(gauge)) => return gauge.clone(),
            Some(Named::Family(_) | Named::Counters(_)) => {
                // A programming error, but metrics must never take the process
                // down: hand out a gauge nobody scrapes and say so.
                tracing::error!(metric = name, "metric already registered as a family");
                return Gauge::default();
            }
            None => {}
        }
        let gauge = Gauge::default();
        self.registry.lock().register(name, help, gauge.clone());
        named.insert(name, Named::Gauge(gauge.clone()));
        gauge
    }

    /// A family of gauges with one label (e.g. `shoal_tasks{state="running"}`).
    /// Idempotent like [`Metrics::gauge`]; the first `help` and `label_name` win.
    pub fn gauge_family(&self, name: &'static str, help: &'static str, label_name: &'static str) -> GaugeFamily {
        let mut named = self.named.lock();
        match named.get(name) {
            Some(Named::Family(family)) => {
                if family.label_name != label_name {
                    tracing::error!(
                        metric = name,
                        registered = family.label_name,
                        requested = label_name,
                        "gauge family already registered with another label name"
                    );
                }
                return family.clone();
            }
            Some(Named::Gauge(_) | Named::Counters(_)) => {
                tracing::error!(metric = name, "metric already registered as another kind");
                return GaugeFamily { label_name, family: Family::default() };
            }
            None => {}
        }
        let family = GaugeFamily { label_name, family: Family::default() };
        self.registry.lock().register(name, help, family.family.clone());
        named.insert(name, Named::Family(family.clone()));
        family
    }

    /// A family of counters with one label, registered as `name` (the
    /// encoder adds `_total`): `counter_family("shoal_x", …, "reason")`
    /// renders `shoal_x_total{reason="…"}`. Idempotent like
    /// [`Metrics::gauge`]; the first `help` and `label_name` win.
    pub fn counter_family(&self, name: &'static str, help: &'static str, label_name: &'static str) -> CounterFamily {
        let mut named = self.named.lock();
        match named.get(name) {
            Some(Named::Counters(family)) => {
                if family.label_name != label_name {
                    tracing::error!(
                        metric = name,
                        registered = family.label_name,
                        requested = label_name,
                        "counter family already registered with another label name"
                    );
                }
                return family.clone();
            }
            Some(Named::Gauge(_) | Named::Family(_)) => {
                tracing::error!(metric = name, "metric already registered as a gauge");
                return CounterFamily { label_name, family: Family::default() };
            }
            None => {}
        }
        let family = CounterFamily { label_name, family: Family::default() };
        self.registry.lock().register(name, help, family.family.clone());
        named.insert(name, Named::Counters(family.clone()));
        family
    }

    /// Everything registered, in the OpenMetrics text format (which Prometheus
    /// scrapes as `application/openmetrics-text; version=1.0.0`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would come from a
        // metric's own encoder, so render what we have rather than nothing.
        if let Err(err) = encode(&mut out, &self.registry.lock()) {
            tracing::error!(error = %err, "failed to encode metrics");
        }
        out
    }
}

/// A one-label gauge family; see [`Metrics::gauge_family`].
#[derive(Clone)]
pub struct GaugeFamily {
    label_name: &'static str,
    family: Family<[(&'static str, String); 1], Gauge>,
}

impl GaugeFamily {
    pub fn set(&self, label_value: &str, v: i64) {
        self.family.get_or_create(&[(self.label_name, label_value.to_string())]).set(v);
    }

    pub fn get(&self, label_value: &str) -> i64 {
        self.family.get(&[(self.label_name, label_value.to_string())]).map_or(0, |gauge| gauge.get())
    }

    /// The gauge of one label value, to keep and move without a lookup.
    pub fn gauge(&self, label_value: &str) -> Gauge {
        self.family.get_or_create(&[(self.label_name, label_value.to_string())]).clone()
    }
}

/// A one-label counter family; see [`Metrics::counter_family`].
#[derive(Clone)]
pub struct CounterFamily {
    label_name: &'static str,
    family: Family<[(&'static str, &'static str); 1], Counter>,
}

impl CounterFamily {
    pub fn inc(&self, label_value: &'static str) {
        self.family.get_or_create(&[(self.label_name, label_value)]).inc();
    }

    pub fn get(&self, label_value: &'static str) -> u64 {
        self.family.get(&[(self.label_name, label_value)]).map_or(0, |counter| counter.get())
    }
}

/// One actor's series. Senders call [`ActorMetrics::enqueued`], the actor
/// calls [`ActorMetrics::handled`] when a message is done.
#[derive(Clone)]
pub struct ActorMetrics {
    messages: Counter,
    errors: Counter,
    restarts: Counter,
    mailbox_depth: Gauge,
    handle_seconds: Histogram,
}

impl ActorMetrics {
    /// A message was sent to the actor: mailbox depth +1.
    pub fn enqueued(&self) {
        self.mailbox_depth.inc();
    }

    /// A message was handled, starting at `started`.
    pub fn handled(&self, started: Instant, ok: bool) {
        self.messages.inc();
        if !ok {
            self.errors.inc();
        }
        self.handle_seconds.observe(started.elapsed().as_secs_f64());
        // Not every sender counts its sends (do_send from a callback, say), so
        // never let the depth go below zero.
        let depth: &AtomicI64 = self.mailbox_depth.inner();
        let _ = depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some((d - 1).max(0)));
    }

    pub fn restarted(&self) {
        self.restarts.inc();
    }

    pub fn mailbox_depth(&self) -> i64 {
        self.mailbox_depth.get()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The value of the sample line that starts with `prefix`, e.g.
    /// `shoal_actor_messages_total{actor="a"}`.
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn actor_series_render_and_move() {
        let m = Metrics::new();
        let a = m.actor("dispatcher");
        let text = m.render();
        for name in [
            "# TYPE shoal_actor_messages counter",
            "# TYPE shoal_actor_errors counter",
            "# TYPE shoal_actor_restarts counter",
            "# TYPE shoal_actor_mailbox_depth gauge",
            "# TYPE shoal_actor_handle_seconds histogram",
            "# UNIT shoal_actor_handle_seconds seconds",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
        assert_eq!(sample(&text, r#"shoal_actor_messages_total{actor="dispatcher"}"#), Some(0.0));

        a.enqueued();
        a.enqueued();
        a.enqueued();
        let text = m.render();
        assert_eq!(sample(&text, r#"shoal_actor_mailbox_depth{actor="dispatcher"}"#), Some(3.0));

        let started = Instant::now() - Duration::from_millis(30);
        a.handled(started, true);
        a.handled(started, false);
        a.restarted();
        let text = m.render();
        assert_eq!(sample(&text, r#"shoal_actor_messages_total{actor="dispatcher"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"shoal_actor_errors_total{actor="dispatcher"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"shoal_actor_restarts_total{actor="dispatcher"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"shoal_actor_mailbox_depth{actor="dispatcher"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"shoal_actor_handle_seconds_count{actor="dispatcher"}"#), Some(2.0));
        // At least 30 ms: nothing in the buckets up to 25 ms (the upper side
        // depends on how fast this machine is, so it is not asserted).
        assert_eq!(
            sample(&text, r#"shoal_actor_handle_seconds_bucket{le="0.025",actor="dispatcher"}"#),
            Some(0.0),
            "{text}"
        );
        assert_eq!(sample(&text, r#"shoal_actor_handle_seconds_bucket{le="+Inf",actor="dispatcher"}"#), Some(2.0));
        let sum = sample(&text, r#"shoal_actor_handle_seconds_sum{actor="dispatcher"}"#);
        assert!(sum.is_some_and(|s| s >= 0.06), "{sum:?}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_buckets_span_10us_to_10s() {
        let text = {
            let m = Metrics::new();
            m.actor("buckets").handled(Instant::now(), true);
            m.render()
        };
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("shoal_actor_handle_seconds_bucket{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(les.first(), Some(&"0.00001"));
        assert_eq!(les[les.len() - 2], "10.0");
        assert_eq!(les.last(), Some(&"+Inf"));
        assert!(HANDLE_SECONDS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn mailbox_depth_saturates_at_zero() {
        let m = Metrics::new();
        let a = m.actor("membership");
        a.handled(Instant::now(), true);
        a.handled(Instant::now(), true);
        assert_eq!(a.mailbox_depth(), 0);
        a.enqueued();
        assert_eq!(a.mailbox_depth(), 1);
        // Clones share the same series.
        let b = m.actor("membership");
        b.handled(Instant::now(), true);
        assert_eq!(a.mailbox_depth(), 0);
    }

    #[test]
    fn gauges_register_once_and_render() {
        let m = Metrics::new();
        let term = m.gauge("shoal_raft_term", "Current raft term");
        term.set(7);
        // Same name: same gauge, no duplicate registration.
        let again = m.gauge("shoal_raft_term", "Current raft term");
        again.inc();
        assert_eq!(term.get(), 8);

        let tasks = m.gauge_family("shoal_tasks", "Tasks by state", "state");
        tasks.set("running", 6);
        tasks.set("failed", 1);
        m.gauge_family("shoal_tasks", "Tasks by state", "state").set("running", 5);
        assert_eq!(tasks.get("running"), 5);
        tasks.gauge("failed").inc();
        assert_eq!(tasks.get("failed"), 2, "the kept gauge is the family's");
        tasks.set("failed", 1);

        let text = m.render();
        assert_eq!(text.matches("# TYPE shoal_raft_term gauge").count(), 1);
        assert_eq!(text.matches("# TYPE shoal_tasks gauge").count(), 1);
        assert!(text.contains("# HELP shoal_raft_term Current raft term.\n"));
        assert_eq!(sample(&text, "shoal_raft_term"), Some(8.0));
        assert_eq!(sample(&text, r#"shoal_tasks{state="running"}"#), Some(5.0));
        assert_eq!(sample(&text, r#"shoal_tasks{state="failed"}"#), Some(1.0));
    }

    #[test]
    fn counter_families_register_once_and_render() {
        let m = Metrics::new();
        let refused = m.counter_family("shoal_refused", "Connections refused", "reason");
        refused.inc("full");
        refused.inc("full");
        m.counter_family("shoal_refused", "Connections refused", "reason").inc("timeout");
        assert_eq!((refused.get("full"), refused.get("timeout"), refused.get("other")), (2, 1, 0));
        let text = m.render();
        assert_eq!(text.matches("# TYPE shoal_refused counter").count(), 1, "{text}");
        assert_eq!(sample(&text, r#"shoal_refused_total{reason="full"}"#), Some(2.0), "{text}");
        assert_eq!(sample(&text, r#"shoal_refused_total{reason="timeout"}"#), Some(1.0), "{text}");
    }

    #[test]
    fn kind_mismatch_does_not_panic_or_duplicate() {
        let m = Metrics::new();
        m.gauge("shoal_x", "x").set(1);
        m.gauge_family("shoal_x", "x", "k").set("v", 2);
        m.counter_family("shoal_x", "x", "k").inc("v");
        let text = m.render();
        assert_eq!(text.matches("# TYPE shoal_x gauge").count(), 1);
        assert_eq!(sample(&text, "shoal_x"), Some(1.0));
    }

    #[test]
    fn global_registry_is_shared() {
        let a = metrics().actor("metrics-test-global");
        a.restarted();
        assert!(std::ptr::eq(metrics(), metrics()));
        assert!(metrics().render().contains(r#"shoal_actor_restarts_total{actor="metrics-test-global"} 1"#));
    }
}

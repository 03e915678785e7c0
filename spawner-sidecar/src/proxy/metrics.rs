//! The proxy's counters, kept in `prometheus-client` types (the daemon's
//! metrics crate): they are atomics, so the data path bumps them directly,
//! and the status page and `/metrics` read the same values.
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    // 1 ms to about a minute, doubling: a frozen service wakes in
    // milliseconds, a JVM in tens of seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// A handle into `family`. A function, so that the read guard
/// `get_or_create` returns is dropped here: held to the end of a longer
/// expression, it deadlocks the next `get_or_create` that must insert.
fn get<M: Clone, C: prometheus_client::metrics::family::MetricConstructor<M>>(
    family: &Family<Labels, M, C>,
    labels: &Labels,
) -> M {
    family.get_or_create(labels).clone()
}

/// Every family, registered once.
pub struct Metrics {
    registry: Registry,
    held: Family<Labels, Gauge>,
    forwarding: Family<Labels, Gauge>,
    connections: Family<Labels, Counter>,
    resets: Family<Labels, Counter>,
    starts: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    cold_start: Family<Labels, Histogram, fn() -> Histogram>,
    state: Family<Labels, Gauge>,
}

/// One service's handles into the families.
#[derive(Clone)]
pub struct ServiceMetrics {
    pub held: Gauge,
    pub forwarding: Gauge,
    pub accepted: Counter,
    pub forwarded: Counter,
    pub timed_out: Counter,
    /// Held clients closed because the start they waited for died.
    pub start_failed: Counter,
    /// Clients whose backend could not be dialed once it was ready.
    pub dial_failed: Counter,
    /// Clients from a network not allowed (or denied).
    pub denied: Counter,
    /// With wake-on-data: clients that closed before sending a byte.
    pub no_data: Counter,
    pub resets: Counter,
    pub starts_connection: Counter,
    pub starts_auto: Counter,
    /// Thaws of a frozen service (`idle_action: freeze`).
    pub starts_thaw: Counter,
    pub bytes_to_backend: Counter,
    pub bytes_to_client: Counter,
    /// First held client to the first byte forwarded, per cold start or thaw.
    pub cold_start: Histogram,
}

pub const STATES: &[&str] = &[
    "forwarding",
    "stopped",
    "starting",
    "running",
    "frozen",
    "stopping",
    "crashloop",
];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spawner_sidecar_proxy");
        let held = Family::<Labels, Gauge>::default();
        registry.register(
            "connections_held",
            "Clients held, waiting for their service to be ready",
            held.clone(),
        );
        let forwarding = Family::<Labels, Gauge>::default();
        registry.register(
            "connections_forwarding",
            "Clients being forwarded now",
            forwarding.clone(),
        );
        let connections = Family::<Labels, Counter>::default();
        registry.register(
            "connections",
            "Clients by outcome: accepted (all), forwarded, timed_out (held past timeout), start_failed, dial_failed, denied (source network), no_data (closed before a byte, with wake-on-data)",
            connections.clone(),
        );
        let resets = Family::<Labels, Counter>::default();
        registry.register(
            "resets",
            "Forwarded connections that ended with a reset (propagated to the other side)",
            resets.clone(),
        );
        let starts = Family::<Labels, Counter>::default();
        registry.register(
            "starts",
            "Starts of the service's command by reason (connection, auto-start), and thaws of a frozen one",
            starts.clone(),
        );
        let bytes = Family::<Labels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes forwarded by direction, counted as they are written",
            bytes.clone(),
        );
        let cold_start =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "cold_start_seconds",
            "From the client that asked for a start (or a thaw) to the first byte forwarded for it",
            cold_start.clone(),
        );
        let state = Family::<Labels, Gauge>::default();
        registry.register(
            "service_state",
            "1 for the service's current state",
            state.clone(),
        );
        Self {
            registry,
            held,
            forwarding,
            connections,
            resets,
            starts,
            bytes,
            cold_start,
            state,
        }
    }

    pub fn service(&self, name: &str) -> ServiceMetrics {
        let service = || vec![("service", name.to_string())];
        let with = |key, value: &str| {
            let mut labels = service();
            labels.push((key, value.to_string()));
            labels
        };
        let outcome = |o| get(&self.connections, &with("outcome", o));
        ServiceMetrics {
            held: get(&self.held, &service()),
            forwarding: get(&self.forwarding, &service()),
            accepted: outcome("accepted"),
            forwarded: outcome("forwarded"),
            timed_out: outcome("timed_out"),
            start_failed: outcome("start_failed"),
            dial_failed: outcome("dial_failed"),
            denied: outcome("denied"),
            no_data: outcome("no_data"),
            resets: get(&self.resets, &service()),
            starts_connection: get(&self.starts, &with("reason", "connection")),
            starts_auto: get(&self.starts, &with("reason", "auto-start")),
            starts_thaw: get(&self.starts, &with("reason", "thaw")),
            bytes_to_backend: get(&self.bytes, &with("direction", "to_backend")),
            bytes_to_client: get(&self.bytes, &with("direction", "to_client")),
            cold_start: get(&self.cold_start, &service()),
        }
    }

    /// OpenMetrics text, with each service's state set from `states`.
    pub fn render(&self, states: &[(&str, &str)]) -> Result<String, std::fmt::Error> {
        for (service, current) in states {
            for state in STATES {
                let labels = vec![
                    ("service", (*service).to_string()),
                    ("state", (*state).to_string()),
                ];
                get(&self.state, &labels).set(i64::from(state == current));
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_share_families_and_render_their_states() {
        let metrics = Metrics::new();
        let a = metrics.service("a");
        let b = metrics.service("b");
        a.starts_connection.inc();
        b.bytes_to_client.inc_by(7);
        let text = metrics
            .render(&[("a", "running"), ("b", "stopped")])
            .expect("renders");
        assert!(
            text.contains(
                r#"spawner_sidecar_proxy_starts_total{service="a",reason="connection"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"spawner_sidecar_proxy_bytes_total{service="b",direction="to_client"} 7"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"spawner_sidecar_proxy_service_state{service="b",state="stopped"} 1"#),
            "{text}"
        );
    }
}

//! `GET /metrics`: per-port gauges and counters, and the tracker's own
//! health, through the maintained `prometheus-client` crate.
//!
//! That crate writes OpenMetrics text, which Prometheus asks for in its
//! `Accept` header. Other scrapers get the classic text format (0.0.4),
//! made from the same output by [`to_classic`]: the two differ, for what we
//! emit, only in the `# EOF` and `# UNIT` lines and in counter families
//! being named with their `_total` suffix.
use std::collections::BTreeMap;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family as MetricFamily, gauge::Gauge},
    registry::Registry,
};

use crate::{
    activity::Idle,
    source::{Family, Reading, SourceHealth, ebpf::node::NodeHealth},
};

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub type Labels = Vec<(&'static str, String)>;

/// The ports of one namespace, and the labels that tell it apart from the
/// others in node mode (none in the per-pod mode).
pub struct PortSet<'a> {
    pub labels: Labels,
    pub reading: &'a Reading,
    pub idle: &'a Idle,
}

/// Everything one scrape reports.
pub struct Scrape<'a> {
    pub sets: Vec<PortSet<'a>>,
    pub now_ns: u64,
    /// `--min-connection-age`, for the long-lived gauge.
    pub min_connection_age_ns: u64,
    pub source: &'static str,
    pub health: SourceHealth,
    pub source_errors: u64,
    /// Hook runs by (hook, result).
    pub hook_runs: BTreeMap<(&'static str, &'static str), u64>,
    /// Node mode's own figures.
    pub node: Option<NodeFigures>,
}

/// What node mode adds about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeFigures {
    pub health: NodeHealth,
    /// Namespaces whose processes' cgroups could not be read.
    pub attribution_failures: u64,
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> MetricFamily<Labels, Gauge> {
    let family = MetricFamily::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> MetricFamily<Labels, Counter> {
    let family = MetricFamily::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The OpenMetrics text of one scrape.
pub fn render(scrape: &Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("spawner_sidecar");
    let connections = gauge_family(
        &mut registry,
        "connections",
        "TCP sockets whose local port is the port, by state and address family (ignored peers left out)",
    );
    let long_lived = gauge_family(
        &mut registry,
        "long_lived_connections",
        "ESTABLISHED connections at least --min-connection-age old",
    );
    let listening = gauge_family(
        &mut registry,
        "listening",
        "1 if a LISTEN socket exists on the port",
    );
    let idle = gauge_family(
        &mut registry,
        "seconds_since_active",
        "Seconds since the port last had an active or waiting connection",
    );
    let ignored = gauge_family(
        &mut registry,
        "ignored_connections",
        "ESTABLISHED and TIME_WAIT sockets from --ignore-peer networks",
    );
    let opened = counter_family(
        &mut registry,
        "connections_opened",
        "Connections that entered ESTABLISHED since start",
    );
    let closed = counter_family(
        &mut registry,
        "connections_closed",
        "Connections that left ESTABLISHED since start",
    );
    for (set, (port, r)) in scrape
        .sets
        .iter()
        .flat_map(|set| set.reading.iter().map(move |p| (set, p)))
    {
        let port_label = || {
            let mut labels = set.labels.clone();
            labels.push(("port", port.to_string()));
            labels
        };
        for family in Family::ALL {
            for (state, value) in [
                ("established", r.established[family.index()]),
                ("time_wait", r.time_wait[family.index()]),
            ] {
                let mut labels = port_label();
                labels.push(("state", state.to_string()));
                labels.push(("family", family.as_str().to_string()));
                connections.get_or_create(&labels).set(as_i64(value));
            }
        }
        let old_enough = r
            .established_at_least(scrape.min_connection_age_ns, scrape.now_ns)
            .min(r.established_total());
        long_lived
            .get_or_create(&port_label())
            .set(as_i64(old_enough));
        listening
            .get_or_create(&port_label())
            .set(i64::from(r.listeners > 0));
        let seconds = set.idle.ports.get(port).copied().unwrap_or(0);
        idle.get_or_create(&port_label()).set(as_i64(seconds));
        ignored
            .get_or_create(&port_label())
            .set(as_i64(r.ignored()));
        opened.get_or_create(&port_label()).inc_by(r.opened);
        closed.get_or_create(&port_label()).inc_by(r.closed);
    }

    gauge_family(
        &mut registry,
        "source_info",
        "The source answering: ebpf, sock-diag or proc",
    )
    .get_or_create(&vec![("source", scrape.source.to_string())])
    .set(1);
    let health = scrape.health;
    let totals: [(&str, &str, Option<u64>); 6] = [
        (
            "kernel_events",
            "TCP state changes the kernel program saw, on every port",
            health.kernel_events,
        ),
        (
            "kernel_missed_events",
            "Program runs the kernel skipped (already running on that CPU); the snapshot reconcile repairs their effect",
            health.kernel_missed_events,
        ),
        (
            "untracked_connections",
            "Connections the per-connection map had no room for (raise --max-tracked-connections)",
            health.untracked_connections,
        ),
        (
            "lost_listener_reports",
            "New listeners the kernel could not report at once (found at the next tick instead)",
            health.lost_listener_reports,
        ),
        (
            "reconcile_corrections",
            "Times a snapshot found the event-fed counts wrong and corrected them",
            Some(health.corrections),
        ),
        (
            "source_errors",
            "Reads of the source that failed",
            Some(scrape.source_errors),
        ),
    ];
    for (name, help, value) in totals {
        if let Some(value) = value {
            let counter = Counter::<u64>::default();
            counter.inc_by(value);
            registry.register(name, help, counter);
        }
    }
    if let Some(node) = scrape.node {
        for (name, help, value) in [
            (
                "node_namespaces",
                "Network namespaces node mode follows",
                node.health.namespaces,
            ),
            (
                "node_unreachable_namespaces",
                "Followed namespaces with no process in them to read (pinned by a mount only)",
                node.health.unreachable,
            ),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(as_i64(value));
            registry.register(name, help, gauge);
        }
        let overflows = counter_family(
            &mut registry,
            "node_overflows",
            "Namespaces or ports the kernel program had no room to follow (--max-namespaces, --max-ports-per-namespace)",
        );
        overflows
            .get_or_create(&vec![("kind", "namespaces".to_string())])
            .inc_by(node.health.namespaces_overflow);
        overflows
            .get_or_create(&vec![("kind", "ports".to_string())])
            .inc_by(node.health.ports_overflow);
        let failures = Counter::<u64>::default();
        failures.inc_by(node.attribution_failures);
        registry.register(
            "node_attribution_failures",
            "Times the processes of a namespace could not be read to find its pod",
            failures,
        );
    }
    let hooks = counter_family(
        &mut registry,
        "hook_runs",
        "Idle and active hook runs by hook and result (ok, failed, timeout)",
    );
    for ((hook, result), count) in &scrape.hook_runs {
        hooks
            .get_or_create(&vec![
                ("hook", hook.to_string()),
                ("result", result.to_string()),
            ])
            .inc_by(*count);
    }

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Whether the `Accept` header prefers OpenMetrics to the classic format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut best: Option<(f32, bool)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let openmetrics = match media.as_str() {
            "application/openmetrics-text" => true,
            "text/plain" | "text/*" | "*/*" => false,
            _ => continue,
        };
        // On a tie the first listed wins, as clients order by preference.
        if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, openmetrics));
        }
    }
    best.is_some_and(|(_, openmetrics)| openmetrics)
}

/// Classic Prometheus text (0.0.4) from OpenMetrics text as `render` writes it.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::source::PortReading;

    fn scrape_text() -> String {
        let reading = Reading::from([(
            8080,
            PortReading {
                established: [2, 1],
                time_wait: [0, 3],
                ignored_established: 1,
                listeners: 1,
                opened: 10,
                closed: 7,
                starts: Some(vec![1_000, 58_000_000_000, 59_000_000_000]),
                ..Default::default()
            },
        )]);
        let idle = Idle {
            ports: BTreeMap::from([(8080, 0)]),
            overall: 0,
        };
        let mut text = String::new();
        let scrape = Scrape {
            sets: vec![PortSet {
                labels: Vec::new(),
                reading: &reading,
                idle: &idle,
            }],
            now_ns: 60_000_000_000,
            min_connection_age_ns: 6_000_000_000,
            source: "ebpf",
            health: SourceHealth {
                kernel_events: Some(42),
                corrections: 1,
                ..Default::default()
            },
            source_errors: 0,
            hook_runs: BTreeMap::from([(("on-idle", "ok"), 2)]),
            node: None,
        };
        write!(text, "{}", render(&scrape).expect("render")).expect("write");
        text
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let text = scrape_text();
        for line in [
            r#"spawner_sidecar_connections{port="8080",state="established",family="ipv4"} 2"#,
            r#"spawner_sidecar_connections{port="8080",state="established",family="ipv6"} 1"#,
            r#"spawner_sidecar_connections{port="8080",state="time_wait",family="ipv6"} 3"#,
            r#"spawner_sidecar_long_lived_connections{port="8080"} 1"#,
            r#"spawner_sidecar_listening{port="8080"} 1"#,
            r#"spawner_sidecar_seconds_since_active{port="8080"} 0"#,
            r#"spawner_sidecar_ignored_connections{port="8080"} 1"#,
            r#"spawner_sidecar_connections_opened_total{port="8080"} 10"#,
            r#"spawner_sidecar_connections_closed_total{port="8080"} 7"#,
            r#"spawner_sidecar_source_info{source="ebpf"} 1"#,
            "spawner_sidecar_kernel_events_total 42",
            "spawner_sidecar_reconcile_corrections_total 1",
            r#"spawner_sidecar_hook_runs_total{hook="on-idle",result="ok"} 2"#,
            "# TYPE spawner_sidecar_connections_opened counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("kernel_missed_events"),
            "unknown values are left out"
        );
    }

    #[test]
    fn classic_format_names_counters_with_total_and_has_no_eof() {
        let classic = to_classic(&scrape_text());
        assert!(!classic.contains("# EOF"));
        assert!(classic.contains("# TYPE spawner_sidecar_connections_opened_total counter\n"));
        assert!(classic.contains("# HELP spawner_sidecar_connections_opened_total "));
        assert!(classic.contains("# TYPE spawner_sidecar_connections gauge\n"));
        assert!(classic.contains("spawner_sidecar_connections_opened_total{port=\"8080\"} 10\n"));
    }

    #[test]
    fn negotiates_the_format_from_accept() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some(
            "text/plain, application/openmetrics-text"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(wants_openmetrics(Some(
            "text/plain;q=0.5, application/openmetrics-text"
        )));
    }
}

//! Node mode (`spawner-sidecar node`): one tracker counts every network
//! namespace of the host and attributes namespaces to pods. Fake pods
//! (`test_support::pods`) stand in for a kubelet's: a namespace, and
//! processes in cgroups at kubelet paths (both drivers, every QoS class,
//! v1 and v2 hierarchies). Ground truth is `ss` in each pod's namespace.
//! Interface under test: docs/cli.md and the API of node mode.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    collections::BTreeSet,
    fs,
    ops::Range,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::pod_server;
use serde_json::Value;
use test_support::{
    FakePod, PodSpec, Server, Sidecar, binary, bpf, eventually, http, netns,
    pods::{self, Driver, Hierarchy, Qos, Runtime},
    process::Process,
    procinfo::{self, Memory},
    prometheus, require_ebpf, ss,
};

/// The port every pod serves on, as a Deployment's pods all would.
const PORT: u16 = 8080;
/// The flags of every tracker here, node and sidecar alike.
const FLAGS: [&str; 4] = ["--monitor-port", "8080", "--refresh-rate-seconds", "1"];
/// The refresh those flags set: namespaces come and go within one.
const REFRESH: Duration = Duration::from_secs(1);
/// What a loaded two-core machine may add to a bound.
const MARGIN: Duration = Duration::from_secs(3);
/// Pods made at once (each costs a few `ip` processes).
const PARALLEL: usize = 4;

const DRIVERS: [Driver; 4] = [
    Driver::Cgroupfs,
    Driver::Systemd(Runtime::Containerd),
    Driver::Systemd(Runtime::Crio),
    Driver::Systemd(Runtime::Docker),
];
const QOS: [Qos; 3] = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort];
const HIERARCHIES: [Hierarchy; 4] = [
    Hierarchy::V1("pids"),
    Hierarchy::V1("cpu"),
    Hierarchy::V1("systemd"),
    Hierarchy::Unified,
];
/// The pod of a population with a second container.
const TWO_CONTAINERS: usize = 7;

fn start_node() -> Sidecar {
    Sidecar::start_node(&FLAGS)
}

/// Pod `i`'s layout: pods 0..48 are every driver, QoS class and
/// hierarchy together, once each.
fn spec(i: usize) -> PodSpec {
    PodSpec {
        driver: DRIVERS[i % 4],
        qos: QOS[(i / 4) % 3],
        hierarchy: HIERARCHIES[(i / 12) % 4],
        containers: if i == TWO_CONTAINERS { 2 } else { 1 },
    }
}

/// Pod `i` serving on PORT, as yet without connections.
fn serving_pod(i: usize) -> FakePod {
    let spec = spec(i);
    let mut pod = FakePod::create(spec).unwrap_or_else(|e| panic!("pod {i} ({spec:?}): {e}"));
    // The second container first: both are in the namespace by the time
    // its first followed socket (the listener) appears.
    for container in (1..spec.containers).rev() {
        pod_server::start(&mut pod, container, &[]);
    }
    pod_server::start(&mut pod, 0, &[PORT]);
    pod
}

/// Pod `i` of a population: serving, with `i % 7` clients connected
/// (ESTABLISHED) and `i % 5` connections the server closed (TIME_WAIT).
fn populated_pod(i: usize) -> FakePod {
    let mut pod = serving_pod(i);
    pod_server::connect(&mut pod, PORT, i % 7);
    pod_server::close_server_first(&pod, PORT, i % 5);
    pod
}

/// `make(i)` for i in 0..n, a few at a time; in the order of `i`.
fn make_pods(n: usize, make: impl Fn(usize) -> FakePod + Sync) -> Vec<FakePod> {
    let next = AtomicUsize::new(0);
    let made = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let pod = make(i);
                    made.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, pod));
                }
            });
        }
    });
    let mut made = made.into_inner().unwrap_or_else(|e| e.into_inner());
    made.sort_by_key(|(i, _)| *i);
    made.into_iter().map(|(_, pod)| pod).collect()
}

/// What a tracker answers or `ss` shows for PORT in one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    established: u64,
    time_wait: u64,
    listening: bool,
}

/// `ss` on PORT in namespace `netns` (`None`: ours).
fn ss_counts(netns: Option<&str>) -> Counts {
    let lines = ss::Query::all()
        .netns(netns)
        .port(PORT)
        .lines()
        .unwrap_or_else(|e| panic!("ss in {netns:?}: {e}"));
    let state = |name: &str| {
        lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(name))
            .count() as u64
    };
    Counts {
        established: state("ESTAB"),
        time_wait: state("TIME-WAIT"),
        listening: state("LISTEN") > 0,
    }
}

/// The counts of a sidecar-style answer (`GET /` fields).
fn answer_counts(answer: &Value) -> Option<Counts> {
    Some(Counts {
        established: answer["active_connections"].as_u64()?,
        time_wait: answer["waiting_connections"].as_u64()?,
        listening: answer["listening"].as_bool()?,
    })
}

fn describe(pod: &FakePod) -> String {
    format!(
        "pod {} (namespace {}, inode {}, {:?})",
        pod.uid(),
        pod.netns().name(),
        pod.inode(),
        pod.spec()
    )
}

/// How the tracker's answer at `path` differs from `ss` in the pod's
/// namespace; `None` when it does not.
fn differs(node: &Sidecar, pod: &FakePod, path: &str) -> Option<String> {
    let (code, answer) = node.get(path);
    let truth = ss_counts(Some(pod.netns().name()));
    let got = if code == 200 {
        answer_counts(&answer)
    } else {
        None
    };
    (got != Some(truth)).then(|| {
        format!(
            "{}: ss {truth:?}, tracker {got:?} (GET {path} answered {code}: {answer})",
            describe(pod)
        )
    })
}

/// Checks `ss` shows in pod `i` the (established, time-wait) counts
/// `made(i)` says were made, and a listener: were the fixture to make
/// nothing, tracker and `ss` would agree on zeros.
fn expect_made(pods: &[FakePod], made: impl Fn(usize) -> (usize, usize)) {
    for (i, pod) in pods.iter().enumerate() {
        let (established, time_wait) = made(i);
        let want = Counts {
            established: established as u64,
            time_wait: time_wait as u64,
            listening: true,
        };
        let truth = ss_counts(Some(pod.netns().name()));
        assert_eq!(truth, want, "ss in {}", describe(pod));
    }
}

/// What differs between `GET /pods/<uid>` and `ss` for each of `pods`.
fn pods_differing(node: &Sidecar, pods: &[FakePod]) -> Vec<String> {
    pods.iter()
        .filter_map(|pod| differs(node, pod, &format!("/pods/{}", pod.uid())))
        .collect()
}

/// Waits until `GET /pods/<uid>` equals `ss` for every pod, failing with
/// every pod that still differs.
fn expect_pods_match_ss(node: &Sidecar, pods: &[FakePod], within: Duration) {
    eventually(within, || {
        let differing = pods_differing(node, pods);
        if differing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} pods differ from ss:\n{}",
                differing.len(),
                pods.len(),
                differing.join("\n")
            ))
        }
    });
}

fn own_netns_inode() -> u64 {
    fs::metadata("/proc/self/ns/net").unwrap().ino()
}

/// Inodes of the network namespaces alive now that a task or a mount
/// names: any other one is deleted (or kept only by sockets).
fn live_namespaces() -> BTreeSet<u64> {
    let mut live = BTreeSet::new();
    for process in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(tasks) = fs::read_dir(process.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(ns) = fs::metadata(task.path().join("ns/net")) {
                live.insert(ns.ino());
            }
        }
    }
    for mount in fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(ns) = fs::metadata(mount.path()) {
            live.insert(ns.ino());
        }
    }
    live
}

/// The entries of a `{"<key>": [...]}` answer; an error names the answer.
fn try_entries<'a>(answer: &'a Value, key: &str) -> Result<&'a [Value], String> {
    answer[key]
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| format!("no {key:?} array in {answer}"))
}

fn entries<'a>(answer: &'a Value, key: &str) -> &'a [Value] {
    try_entries(answer, key).unwrap_or_else(|e| panic!("{e}"))
}

fn keys(object: &Value) -> Vec<&str> {
    object
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_pods_answer_equals_ss_with_50_pods_on_one_port_and_the_host_apart() {
    require_ebpf!();
    let node = start_node();
    // The same port in the host's namespace: its own counts, in no pod.
    let mut host = Server::v4(PORT);
    host.connect(2);
    host.close_server_first();
    host.connect(3);

    let pods = make_pods(50, populated_pod);
    expect_made(&pods, |i| (i % 7, i % 5));
    expect_pods_match_ss(&node, &pods, REFRESH + MARGIN);

    let (code, list) = node.get("/pods");
    assert_eq!(code, 200, "GET /pods: {list}");
    let listed = entries(&list, "pods");
    let uids: Vec<&str> = listed
        .iter()
        .map(|e| e["pod_uid"].as_str().unwrap_or_default())
        .collect();
    assert!(
        uids.windows(2).all(|w| w[0] < w[1]),
        "GET /pods not sorted by pod_uid, or a pod twice: {uids:?}"
    );
    let mut wrong = Vec::new();
    for pod in &pods {
        let Some(entry) = listed.iter().find(|e| e["pod_uid"] == pod.uid()) else {
            wrong.push(format!("{}: not in GET /pods", describe(pod)));
            continue;
        };
        if entry["netns"].as_u64() != Some(pod.inode()) {
            wrong.push(format!(
                "{}: GET /pods says netns {}",
                describe(pod),
                entry["netns"]
            ));
        }
        let mut containers: Vec<&str> = entry["containers"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        containers.sort_unstable();
        let mut want = pod.container_ids();
        want.sort_unstable();
        if containers != want {
            wrong.push(format!(
                "{}: containers {containers:?} in GET /pods, made {want:?}",
                describe(pod)
            ));
        }
        if entry["qos_class"] != pod.spec().qos.class_name() {
            wrong.push(format!(
                "{}: qos_class {} in GET /pods",
                describe(pod),
                entry["qos_class"]
            ));
        }
        let truth = ss_counts(Some(pod.netns().name()));
        if answer_counts(entry) != Some(truth) {
            wrong.push(format!(
                "{}: ss {truth:?}, GET /pods entry {entry}",
                describe(pod)
            ));
        }
        // Every field of the pod's own answer, besides who it is.
        let (_, own) = node.get(&format!("/pods/{}", pod.uid()));
        let mut fields: BTreeSet<&str> = keys(entry).into_iter().collect();
        for key in ["pod_uid", "netns", "qos_class", "containers"] {
            fields.remove(key);
        }
        let own_fields: BTreeSet<&str> = keys(&own).into_iter().collect();
        if fields != own_fields {
            wrong.push(format!(
                "{}: GET /pods entry has fields {fields:?} besides who the pod is; GET /pods/<uid> {own_fields:?}",
                describe(pod)
            ));
        }
    }
    // No other entry (another test's pods may be listed) claims one of ours.
    for entry in listed {
        if let Some(pod) = pods
            .iter()
            .find(|p| entry["netns"].as_u64() == Some(p.inode()))
            && entry["pod_uid"] != pod.uid()
        {
            wrong.push(format!("{}: GET /pods also has {entry}", describe(pod)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let host_inode = own_netns_inode();
    assert!(
        !listed
            .iter()
            .any(|e| e["netns"].as_u64() == Some(host_inode)),
        "the host's namespace (inode {host_inode}) listed as a pod: {list}"
    );
    eventually(MARGIN, || {
        let path = format!("/netns/{host_inode}");
        let (code, answer) = node.get(&path);
        let truth = ss_counts(None);
        let ours = truth.established >= 3 && truth.time_wait >= 2 && truth.listening;
        if ours && code == 200 && answer_counts(&answer) == Some(truth) {
            Ok(())
        } else {
            Err(format!(
                "host namespace (inode {host_inode}): ss {truth:?} (ours: 3 established, 2 time-wait), GET {path} answered {code}: {answer}"
            ))
        }
    });
    let (code, all) = node.get("/netns");
    assert_eq!(code, 200, "GET /netns: {all}");
    let host_entry = entries(&all, "namespaces")
        .iter()
        .find(|e| e["netns"].as_u64() == Some(host_inode))
        .unwrap_or_else(|| panic!("the host's namespace {host_inode} not in GET /netns: {all}"));
    assert!(host_entry["pod_uid"].is_null(), "{host_entry}");
}

#[test]
fn connections_from_before_the_start_are_counted_at_the_first_answer() {
    require_ebpf!();
    // Every driver, QoS class and hierarchy among them, and two containers.
    const MIX: [usize; 6] = [3, TWO_CONTAINERS, 16, 29, 34, 47];
    let pods = make_pods(MIX.len(), |i| populated_pod(MIX[i]));
    expect_made(&pods, |i| (MIX[i] % 7, MIX[i] % 5));
    let node = start_node();
    // The first answers, without waiting for a refresh.
    let mut wrong = Vec::new();
    for pod in &pods {
        wrong.extend(differs(&node, pod, &format!("/netns/{}", pod.inode())));
        wrong.extend(differs(&node, pod, &format!("/pods/{}", pod.uid())));
    }
    assert!(
        wrong.is_empty(),
        "first answers after the start:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn counts_are_exact_after_churn_in_50_namespaces_at_once() {
    require_ebpf!();
    const PER_POD: usize = 200;
    let node = start_node();
    let pods = make_pods(50, |i| {
        let mut pod = serving_pod(i);
        pod_server::connect(&mut pod, PORT, i % 3);
        pod
    });
    expect_pods_match_ss(&node, &pods, REFRESH + MARGIN);
    let names: Vec<String> = pods.iter().map(|p| p.netns().name().to_string()).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                s.spawn(move || {
                    let inside = name.clone();
                    netns::run_in(name, move || {
                        (0..PER_POD)
                            .filter_map(|i| pod_server::short_connection(PORT, i + k).err())
                            .map(|e| format!("namespace {inside}: {e}"))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_else(|e| vec![e.to_string()])
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "churn failed:\n{}",
        failures.join("\n")
    );
    // Each pod's churn left TIME_WAIT sockets to count.
    for pod in &pods {
        let truth = ss_counts(Some(pod.netns().name()));
        assert!(truth.time_wait > 0, "{}: ss {truth:?}", describe(pod));
    }
    expect_pods_match_ss(&node, &pods, REFRESH + MARGIN);
}

/// Whether the sidecar's answer and the node's have the same keys in the
/// same order and values of the same types, equal but for the idle
/// seconds (read at different moments: within 1).
fn same_answer(sidecar: &Value, node: &Value, at: &str) -> Result<(), String> {
    match (sidecar, node) {
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb) = (keys(sidecar), keys(node));
            if ka != kb {
                return Err(format!(
                    "{at}: keys {ka:?} in the sidecar's, {kb:?} in the node's"
                ));
            }
            for (key, value) in a {
                same_answer(value, &b[key], &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(b)) => {
            let timed = at.ends_with(".seconds_since_active") || at.ends_with(".seconds_inactive");
            match (a.as_u64(), b.as_u64()) {
                (Some(a), Some(b)) if a == b || (timed && a.abs_diff(b) <= 1) => Ok(()),
                _ => Err(format!("{at}: {a} in the sidecar's, {b} in the node's")),
            }
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{at}: {a} in the sidecar's, {b} in the node's")),
    }
}

#[test]
fn same_answer_tells_key_order_types_and_values_apart() {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    let base = parse(r#"{"a":1,"seconds_inactive":5,"p":{"8080":{"x":true}}}"#);
    assert_eq!(same_answer(&base, &base, ""), Ok(()));
    for (other, differs_at) in [
        (
            r#"{"a":1,"seconds_inactive":6,"p":{"8080":{"x":true}}}"#,
            None,
        ),
        (
            r#"{"a":1,"seconds_inactive":7,"p":{"8080":{"x":true}}}"#,
            Some(".seconds_inactive"),
        ),
        (
            r#"{"seconds_inactive":5,"a":1,"p":{"8080":{"x":true}}}"#,
            Some("keys"),
        ),
        (
            r#"{"a":2,"seconds_inactive":5,"p":{"8080":{"x":true}}}"#,
            Some(".a"),
        ),
        (
            r#"{"a":"1","seconds_inactive":5,"p":{"8080":{"x":true}}}"#,
            Some(".a"),
        ),
        (
            r#"{"a":1,"seconds_inactive":5,"p":{"8080":{"x":1}}}"#,
            Some(".p.8080.x"),
        ),
    ] {
        let result = same_answer(&base, &parse(other), "");
        match differs_at {
            None => assert_eq!(result, Ok(()), "{other}"),
            Some(at) => assert!(
                result.as_ref().is_err_and(|e| e.contains(at)),
                "{other}: {result:?}"
            ),
        }
    }
}

#[test]
fn a_pods_answer_is_byte_compatible_with_the_sidecars_in_that_pod() {
    require_ebpf!();
    let mut pod = FakePod::create(PodSpec {
        driver: Driver::Systemd(Runtime::Containerd),
        containers: 2,
        ..PodSpec::default()
    })
    .unwrap();
    pod_server::start(&mut pod, 0, &[PORT]);
    let node = start_node();
    // The sidecar as the pod's second container, with the node's flags.
    let mut cmd = pod.command(1, binary());
    cmd.args(["--serve-address", "127.0.0.1", "--serve-port", "0"])
        .args(FLAGS);
    let sidecar = Sidecar::start_command(&mut cmd, Some("sidecar:"));
    pod_server::connect(&mut pod, PORT, 2);
    pod_server::close_server_first(&pod, PORT, 1);

    let (sidecar_port, name) = (sidecar.port, pod.netns().name().to_string());
    for path in [
        format!("/pods/{}", pod.uid()),
        format!("/netns/{}", pod.inode()),
    ] {
        eventually(REFRESH + MARGIN, || {
            let name = name.clone();
            let theirs = netns::run_in(&name, move || http::get_with(sidecar_port, "/", &[]))
                .map_err(|e| e.to_string())?;
            let ours = http::get_with(node.port, &path, &[]);
            let parse = |body: &str| {
                serde_json::from_str::<Value>(body).map_err(|e| format!("{e}: {body}"))
            };
            let (theirs_json, ours_json) = (parse(&theirs.body)?, parse(&ours.body)?);
            let truth = ss_counts(Some(&name));
            let want = Counts {
                established: 2,
                time_wait: 1,
                listening: true,
            };
            if theirs.code != 200
                || ours.code != 200
                || truth != want
                || answer_counts(&theirs_json) != Some(want)
                || answer_counts(&ours_json) != Some(want)
            {
                return Err(format!(
                    "{}: ss {truth:?}, expected {want:?}; sidecar's GET / {} {}; node's GET {path} {} {}",
                    describe(&pod),
                    theirs.code,
                    theirs.body,
                    ours.code,
                    ours.body
                ));
            }
            same_answer(&theirs_json, &ours_json, "").map_err(|e| {
                format!(
                    "{}: GET {path} differs from the sidecar's GET /: {e}\nsidecar: {}\nnode:    {}",
                    describe(&pod),
                    theirs.body,
                    ours.body
                )
            })?;
            // Read in the same second: then the very bytes are the same.
            if theirs_json == ours_json && theirs.body != ours.body {
                return Err(format!(
                    "same values, other bytes:\nsidecar: {:?}\nnode:    {:?}",
                    theirs.body, ours.body
                ));
            }
            Ok(())
        });
    }
}

#[test]
fn a_deleted_pod_is_gone_from_every_answer_within_one_refresh() {
    require_ebpf!();
    let node = start_node();
    let mut pods = make_pods(3, |i| {
        let mut pod = serving_pod(i);
        pod_server::connect(&mut pod, PORT, 1);
        pod
    });
    expect_pods_match_ss(&node, &pods, REFRESH + MARGIN);
    let gone = pods.remove(1);
    let (uid, inode, what) = (gone.uid().to_string(), gone.inode(), describe(&gone));
    drop(gone);
    let deleted = Instant::now();
    eventually(REFRESH + MARGIN, || {
        let mut left = Vec::new();
        let (code, list) = node.get("/pods");
        let listed = try_entries(&list, "pods").map_err(|e| format!("GET /pods {code}: {e}"))?;
        if listed.iter().any(|e| e["pod_uid"] == uid) {
            left.push("listed in GET /pods".to_string());
        }
        let (code, answer) = node.get(&format!("/pods/{uid}"));
        if code != 404 || !answer["error"].is_string() {
            left.push(format!("GET /pods/{uid} answered {code}: {answer}"));
        }
        let metrics = http::get_with(node.port, "/metrics", &[]).body;
        if metrics.contains(&format!("pod_uid=\"{uid}\"")) {
            left.push("samples with its pod_uid in /metrics".into());
        }
        // Unless a new namespace got the inode number meanwhile.
        if !live_namespaces().contains(&inode) {
            let (code, answer) = node.get(&format!("/netns/{inode}"));
            if code != 404 {
                left.push(format!("GET /netns/{inode} answered {code}: {answer}"));
            }
            if metrics.contains(&format!("netns=\"{inode}\"")) {
                left.push("samples with its netns in /metrics".into());
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}, deleted {:?} ago: {}",
                deleted.elapsed(),
                left.join("; ")
            ))
        }
    });
    // The others are still there, exact.
    expect_pods_match_ss(&node, &pods, MARGIN);
}

/// One create/use/delete cycle: pod `i` with one connection, until the
/// tracker counts it under its pod; then deleted. Returns the namespace's inode.
fn cycle(node_port: u16, i: usize) -> u64 {
    let mut pod = serving_pod(i);
    pod_server::connect(&mut pod, PORT, 1);
    let path = format!("/pods/{}", pod.uid());
    let deadline = Instant::now() + REFRESH + MARGIN;
    loop {
        let (code, answer) = http::get(node_port, &path);
        if code == 200 && answer["active_connections"] == 1 {
            return pod.inode();
        }
        assert!(
            Instant::now() < deadline,
            "cycle {i}: {} not counted within {:?}: GET {path} answered {code}: {answer}",
            describe(&pod),
            REFRESH + MARGIN
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cycles `range`, `workers` at a time; adds their inodes to `inodes`.
fn run_cycles(node_port: u16, range: Range<usize>, workers: usize, inodes: &Mutex<BTreeSet<u64>>) {
    let next = AtomicUsize::new(range.start);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end {
                        break;
                    }
                    let inode = cycle(node_port, i);
                    inodes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(inode);
                }
            });
        }
    });
}

/// Waits until none of `inodes` is in `GET /netns` unless alive again (a
/// new namespace may get a freed inode number).
fn expect_only_live(node: &Sidecar, inodes: &BTreeSet<u64>) -> usize {
    eventually(REFRESH + MARGIN, || {
        let (code, all) = node.get("/netns");
        let listed =
            try_entries(&all, "namespaces").map_err(|e| format!("GET /netns {code}: {e}"))?;
        let live = live_namespaces();
        let stale: Vec<&Value> = listed
            .iter()
            .filter(|e| {
                e["netns"]
                    .as_u64()
                    .is_some_and(|n| inodes.contains(&n) && !live.contains(&n))
            })
            .collect();
        if code == 200 && stale.is_empty() {
            Ok(listed.len())
        } else {
            Err(format!(
                "GET /netns ({code}) still lists {} deleted namespaces: {stale:?}",
                stale.len()
            ))
        }
    })
}

#[test]
fn a_thousand_pod_lifecycles_leave_only_live_namespaces_and_no_growth() {
    require_ebpf!();
    const CYCLES: usize = 1000;
    const WARM_UP: usize = 10;
    const WORKERS: usize = 16;
    /// Entries other tests' namespaces on the port may add meanwhile.
    const SLACK: u64 = 32;
    let node = start_node();
    let programs: BTreeSet<u32> = node.program_ids().into_iter().collect();
    assert!(!programs.is_empty(), "the node holds no BPF program");
    let inodes = Mutex::new(BTreeSet::new());
    let started = Instant::now();

    run_cycles(node.port, 0..WARM_UP, WARM_UP, &inodes);
    expect_only_live(&node, &inodes.lock().unwrap());
    std::thread::sleep(REFRESH);
    let rss_warm = procinfo::memory_kb(node.pid(), Memory::Rss).unwrap();
    let maps_warm = bpf::hash_map_entries(&programs).unwrap();
    assert!(
        !maps_warm.is_empty(),
        "the node's programs {programs:?} use no hash map"
    );

    run_cycles(node.port, WARM_UP..CYCLES, WORKERS, &inodes);
    let cycled = started.elapsed();
    let inodes = inodes.into_inner().unwrap();
    let listed = expect_only_live(&node, &inodes);

    eventually(REFRESH + MARGIN, || {
        let (code, all) = node.get("/netns");
        let listed = try_entries(&all, "namespaces")
            .map_err(|e| format!("GET /netns {code}: {e}"))?
            .len() as f64;
        let followed = prometheus::sample(&node.metrics(), "spawner_sidecar_node_namespaces", &[]);
        (followed == Some(listed)).then_some(()).ok_or(format!(
            "spawner_sidecar_node_namespaces {followed:?}, GET /netns lists {listed}"
        ))
    });
    let maps = bpf::hash_map_entries(&programs).unwrap();
    let grown: Vec<String> = maps
        .iter()
        .filter_map(|now| {
            let before = maps_warm
                .iter()
                .find(|m| m.id == now.id)
                .map_or(0, |m| m.entries);
            (now.entries > before + SLACK).then(|| {
                format!(
                    "{} (id {}): {before} -> {} entries",
                    now.name, now.id, now.entries
                )
            })
        })
        .collect();
    assert!(
        grown.is_empty(),
        "kernel maps grew over {CYCLES} lifecycles ({listed} namespaces followed now): {}\nall: {maps:?}",
        grown.join(", ")
    );
    let rss = eventually(REFRESH + MARGIN, || {
        let rss = procinfo::memory_kb(node.pid(), Memory::Rss).map_err(|e| e.to_string())?;
        (rss <= rss_warm + 1024).then_some(rss).ok_or(format!(
            "VmRSS {rss} kB after {CYCLES} lifecycles, {rss_warm} kB after {WARM_UP}"
        ))
    });
    eprintln!(
        "{CYCLES} lifecycles in {cycled:?} ({} namespaces); VmRSS {rss_warm} -> {rss} kB; maps {maps:?}",
        inodes.len()
    );
}

#[test]
fn bad_requests_answer_400_or_404_with_a_json_error() {
    require_ebpf!();
    let node = start_node();
    let unknown = pods::uuid_v4().unwrap();
    for (path, want) in [
        ("/pods/not-a-uuid".to_string(), 400),
        (format!("/pods/{unknown}"), 404),
        ("/netns/not-a-number".to_string(), 400),
        ("/netns/1".to_string(), 404),
        ("/wait-for-idle".to_string(), 400),
        ("/wait-for-idle?quiet=1s&timeout=1s".to_string(), 400),
        ("/wait-for-idle?pod=not-a-uuid".to_string(), 400),
        (format!("/wait-for-idle?pod={unknown}&timeout=1s"), 404),
    ] {
        let (code, answer) = node.get(&path);
        assert_eq!(code, want, "GET {path}: {answer}");
        assert!(answer["error"].is_string(), "GET {path}: {answer}");
    }
}

/// Runs the node as `cmd` says until it exits (bounded): its exit code and
/// stderr.
fn run_to_exit(cmd: &mut Command) -> (Option<i32>, String) {
    let mut process = Process::spawn(cmd, None).unwrap();
    let status = process
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{cmd:?} did not exit: {e}"));
    (status.code(), process.log())
}

/// The lines of `stderr` with something in them.
fn lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn an_unreadable_host_proc_is_one_line_and_exit_1() {
    require_ebpf!();
    let (code, stderr) = run_to_exit(Command::new(binary()).args([
        "node",
        "--serve-address",
        "127.0.0.1",
        "--serve-port",
        "0",
        "--host-proc",
        "/nonexistent",
    ]));
    assert_eq!(code, Some(1), "{stderr}");
    let lines = lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains("/nonexistent"),
        "{stderr}"
    );
}

/// A copy of the binary anyone may run (the target directory may not
/// be), without file capabilities; removed on drop.
struct PublicCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl PublicCopy {
    fn new() -> PublicCopy {
        let dir = std::env::temp_dir().join(format!("node-unprivileged-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("spawner-sidecar");
        fs::copy(binary(), &bin).unwrap();
        for path in [&dir, &bin] {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        PublicCopy { dir, bin }
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn node_without_privileges_is_one_line_and_exit_1() {
    require_ebpf!();
    let copy = PublicCopy::new();
    // nobody, with no capability left anywhere (bounding set included).
    let (code, stderr) = run_to_exit(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(&copy.bin)
            .args(["node", "--serve-address", "127.0.0.1", "--serve-port", "0"]),
    );
    assert_eq!(code, Some(1), "{stderr}");
    let lines = lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0].to_lowercase();
    assert!(
        line.starts_with("error:")
            && ["privilege", "cap_", "capabilit", "root"]
                .iter()
                .any(|w| line.contains(w)),
        "not a clear line about privileges: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn wait_for_idle_of_one_pod_returns_once_it_is_quiet_while_another_stays_busy() {
    require_ebpf!();
    let node = start_node();
    let mut pods = make_pods(2, |i| {
        let mut pod = serving_pod(i);
        pod_server::connect(&mut pod, PORT, i + 1);
        pod
    });
    expect_pods_match_ss(&node, &pods, REFRESH + MARGIN);
    let (quiet, busy) = (pods[0].uid().to_string(), pods[1].uid().to_string());
    let port = node.port;
    let asked = Instant::now();
    let path = format!("/wait-for-idle?pod={quiet}&quiet=1s&timeout=10s");
    let drain = std::thread::spawn(move || (http::get(port, &path), asked.elapsed()));
    // Time for the request to arrive; were it late, the drain would only
    // start quiet, which the bounds below allow for.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !drain.is_finished(),
        "the drain of pod {quiet} answered while its connection was open"
    );
    let closed = asked.elapsed();
    drop(pods[0].release());
    let ((code, answer), took) = drain.join().unwrap();
    assert_eq!(code, 200, "pod {quiet}: {answer}");
    assert_eq!(answer["active_connections"], 0, "pod {quiet}: {answer}");
    assert_eq!(answer["waiting_connections"], 0, "pod {quiet}: {answer}");
    let (_, own) = node.get(&format!("/pods/{quiet}"));
    assert_eq!(
        keys(&answer),
        keys(&own),
        "the drain's answer is GET /pods/<uid>"
    );
    assert!(
        took >= closed + Duration::from_secs(1) && took < closed + Duration::from_secs(9),
        "pod {quiet}: closed at {closed:?}, drain answered at {took:?}"
    );
    // The other pod kept its connections: its drain times out.
    let (code, answer) = node.get(&format!("/wait-for-idle?pod={busy}&quiet=1s&timeout=2s"));
    assert_eq!(code, 503, "pod {busy}: {answer}");
    assert_eq!(answer["active_connections"], 2, "pod {busy}: {answer}");
}

#[test]
fn metrics_label_each_pods_samples_with_its_uid_and_namespace() {
    require_ebpf!();
    let node = start_node();
    let pods = make_pods(3, |i| {
        let mut pod = serving_pod(i * 13);
        pod_server::connect(&mut pod, PORT, i + 1);
        pod_server::close_server_first(&pod, PORT, i);
        pod
    });
    expect_pods_match_ss(&node, &pods, REFRESH + MARGIN);
    eventually(REFRESH + MARGIN, || {
        let samples = node.metrics();
        let mut wrong = Vec::new();
        let unlabelled: Vec<_> = samples
            .iter()
            .filter(|s| s.name == "spawner_sidecar_connections")
            .filter(|s| !s.labels.contains_key("pod_uid") || !s.labels.contains_key("netns"))
            .collect();
        if !unlabelled.is_empty() {
            wrong.push(format!("samples without pod_uid or netns: {unlabelled:?}"));
        }
        for pod in &pods {
            let (uid, inode) = (pod.uid(), pod.inode().to_string());
            let truth = ss_counts(Some(pod.netns().name()));
            for sample in &samples {
                let claims_uid = sample.labels.get("pod_uid").map(String::as_str) == Some(uid);
                let claims_ns = sample.labels.get("netns") == Some(&inode);
                if claims_uid != claims_ns {
                    wrong.push(format!("{}: sample {sample:?}", describe(pod)));
                }
            }
            let sum = |state: &str| {
                samples
                    .iter()
                    .filter(|s| s.name == "spawner_sidecar_connections")
                    .filter(|s| {
                        s.labels.get("pod_uid").map(String::as_str) == Some(uid)
                            && s.labels.get("state").map(String::as_str) == Some(state)
                            && s.labels.get("port").map(String::as_str) == Some("8080")
                    })
                    .map(|s| s.value as u64)
                    .sum::<u64>()
            };
            let listening = prometheus::sample(
                &samples,
                "spawner_sidecar_listening",
                &[("pod_uid", uid), ("netns", &inode), ("port", "8080")],
            );
            let got = (sum("established"), sum("time_wait"), listening);
            let want = (truth.established, truth.time_wait, Some(1.0));
            if got != want {
                wrong.push(format!(
                    "{}: /metrics (established, time_wait, listening) {got:?}, ss {want:?}",
                    describe(pod)
                ));
            }
        }
        let followed = prometheus::sample(&samples, "spawner_sidecar_node_namespaces", &[]);
        if followed.is_none_or(|n| n < pods.len() as f64) {
            wrong.push(format!("spawner_sidecar_node_namespaces {followed:?}"));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        }
    });
}

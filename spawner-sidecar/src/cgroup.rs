//! Which Kubernetes pod a process belongs to, read from the text of its
//! `/proc/<pid>/cgroup`: the pod UID, QoS class and container ID, as the
//! kubelet and the container runtimes write them into cgroup paths. Pure
//! parsing; reading the file is the caller's business.
//!
//! The kubelet names a pod's cgroup `{"kubepods", <qos>, "pod<uid>"}`, QoS
//! left out for Guaranteed, and each driver spells that differently
//! (`pkg/kubelet/cm/cgroup_manager_linux.go`):
//! - cgroupfs: `/kubepods[/burstable|/besteffort]/pod<uid>/<container-id>`;
//! - systemd: nested slices, each named after all its parents, with `-`
//!   escaped as `_` (`escapeSystemdCgroupName`): `/kubepods.slice/
//!   kubepods-burstable.slice/kubepods-burstable-pod<u_i_d>.slice/
//!   <runtime>-<id>.scope`. A kubelet `--cgroup-root` adds a slice prefix
//!   (kind's nodes: `kubelet-kubepods-...`).
//!
//! The container part is the runtime's: `cri-containerd-<id>.scope`,
//! `crio-<id>.scope` and `docker-<id>.scope` under systemd; the bare ID
//! (containerd, docker) or `crio-<id>` under cgroupfs.
//!
//! Static pods are not found: their UID is an md5 or fnv hash in hex
//! (`pkg/kubelet/config/common.go`, `applyDefaults`), not a UUID, and their
//! mirror pod in the API has another UID anyway.

/// A pod's QoS class, as the kubelet places its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// As the API spells it (`status.qosClass`).
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// The container a process is in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Container {
    /// `"containerd"`, `"cri-o"` or `"docker"` when the path says so; the
    /// cgroupfs driver's bare ID does not (containerd and docker alike).
    pub runtime: Option<&'static str>,
    /// Hex, as the runtime wrote it (64 digits from all three).
    pub id: String,
}

/// The pod a process is in, from its cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// Canonical: lowercase, 8-4-4-4-12 with dashes.
    pub uid: String,
    /// `None` when the class sits above the reader's cgroup namespace root:
    /// under the cgroupfs driver, a path like `/../../pod<uid>/<id>` names no
    /// QoS directory (systemd's slice names always carry it).
    pub qos: Option<Qos>,
    /// `None` for a process in the pod's own cgroup.
    pub container: Option<Container>,
}

/// The pod in `proc_cgroup`, the whole text of `/proc/<pid>/cgroup` (one
/// `N:controllers:/path` line per hierarchy; `0::/path` is cgroup v2, hybrid
/// hosts have both). Every line is tried, since a process may sit in the
/// kubelet's layout in some hierarchies only; the line that says most wins
/// (a container over none, a known QoS over none), the first on a tie.
pub fn pod_of(proc_cgroup: &str) -> Option<PodCgroup> {
    let rank = |p: &PodCgroup| (p.container.is_some(), p.qos.is_some());
    let mut best: Option<PodCgroup> = None;
    for found in proc_cgroup.lines().filter_map(parse_line) {
        if best.as_ref().is_none_or(|b| rank(&found) > rank(b)) {
            best = Some(found);
        }
    }
    best
}

/// The canonical form (lowercase) of a pod UID written with dashes,
/// 8-4-4-4-12 hex digits; `None` for anything else.
pub fn parse_uid(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let well_formed = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    well_formed.then(|| s.to_ascii_lowercase())
}

fn parse_line(line: &str) -> Option<PodCgroup> {
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let _controllers = fields.next()?;
    let path = fields.next()?;
    if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parse_path(path.trim_end())
}

/// A path as `/proc/<pid>/cgroup` shows it. Seen from inside a cgroup
/// namespace it is relative to that namespace's root: ancestors outside it
/// are `..` (`/../../kubepods-burstable-pod<u_i_d>.slice/...`), or missing
/// for paths below the root. So a pod segment whose parent is `..` or
/// absent is accepted; a parent that is there must be the kubelet's.
fn parse_path(path: &str) -> Option<PodCgroup> {
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    // The innermost pod: with a kubelet inside a pod (nested clusters) the
    // process belongs to the inner one.
    segments.iter().enumerate().rev().find_map(|(i, segment)| {
        let (uid, qos) = pod_segment(&segments[..i], segment)?;
        // The innermost container: a runtime that nests a cgroup in the
        // container's (crun's `container`, systemd in a container) leaves
        // names below it that are not IDs, skipped here.
        let container = segments[i + 1..].iter().rev().find_map(|s| container(s));
        Some(PodCgroup {
            uid,
            qos,
            container,
        })
    })
}

/// Whether the tail of `parents` may hold `segment` as the kubelet would.
fn pod_segment(parents: &[&str], segment: &str) -> Option<(String, Option<Qos>)> {
    let parent = parents.last().copied();
    let outside = |p: Option<&str>| p.is_none_or(|p| p == "..");
    if let Some(name) = segment.strip_suffix(".slice") {
        // systemd: `<prefix>kubepods[-<qos>]-pod<u_i_d>.slice` inside
        // `<prefix>kubepods[-<qos>].slice`.
        let (enclosing, escaped) = name.rsplit_once("-pod")?;
        if escaped.contains('-') {
            return None; // not escaped: no systemd driver wrote this
        }
        let uid = parse_uid(&escaped.replace('_', "-"))?;
        let (root, qos) = if let Some(r) = enclosing.strip_suffix("-burstable") {
            (r, Qos::Burstable)
        } else if let Some(r) = enclosing.strip_suffix("-besteffort") {
            (r, Qos::BestEffort)
        } else {
            (enclosing, Qos::Guaranteed)
        };
        let prefix = root.strip_suffix("kubepods")?;
        if !(prefix.is_empty() || prefix.ends_with('-')) {
            return None;
        }
        let inside_its_slice = parent
            .and_then(|p| p.strip_suffix(".slice"))
            .is_some_and(|p| p == enclosing);
        return (outside(parent) || inside_its_slice).then_some((uid, Some(qos)));
    }
    // cgroupfs: `.../kubepods[/burstable|/besteffort]/pod<uid>`.
    let uid = parse_uid(segment.strip_prefix("pod")?)?;
    let qos = match parent {
        _ if outside(parent) => None,
        Some("kubepods") => Some(Qos::Guaranteed),
        Some(class @ ("burstable" | "besteffort")) => {
            let grandparent = parents.len().checked_sub(2).map(|i| parents[i]);
            if !(outside(grandparent) || grandparent == Some("kubepods")) {
                return None;
            }
            Some(if class == "burstable" {
                Qos::Burstable
            } else {
                Qos::BestEffort
            })
        }
        _ => return None,
    };
    Some((uid, qos))
}

/// A container's cgroup name, with or without systemd's `.scope`.
/// conmon (cri-o's monitor) runs in `crio-conmon-<id>`, beside the
/// container it watches: that container is its answer.
fn container(segment: &str) -> Option<Container> {
    const PREFIXES: [(&str, &str); 4] = [
        ("cri-containerd-", "containerd"),
        ("crio-conmon-", "cri-o"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
    ];
    let name = segment.strip_suffix(".scope");
    let bare = name.unwrap_or(segment);
    let id = |id: &str| is_id(id).then(|| id.to_string());
    if let Some((runtime, rest)) = PREFIXES
        .iter()
        .find_map(|(prefix, runtime)| Some((*runtime, bare.strip_prefix(prefix)?)))
    {
        return id(rest).map(|id| Container {
            runtime: Some(runtime),
            id,
        });
    }
    if name.is_some() {
        return None; // a `.scope` without a runtime's prefix is something else
    }
    // cgroupfs: the bare ID.
    id(bare).map(|id| Container { runtime: None, id })
}

/// Runtimes' IDs are 64 hex digits; shorter ones (hand-made test layouts,
/// truncated IDs) are taken too, anything not hex is not an ID.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "e03401ab-1ff2-44e3-8260-3d175888e4a7";
    const UID_: &str = "e03401ab_1ff2_44e3_8260_3d175888e4a7";
    const CID: &str = "2acff90d5b36b8cda9c7d1df1a4be36f8d3b39d2c05b6ab5ea8d0c2a6e3e9f10";

    fn pod(qos: Option<Qos>, runtime: Option<&'static str>) -> Option<PodCgroup> {
        Some(PodCgroup {
            uid: UID.to_string(),
            qos,
            container: Some(Container {
                runtime,
                id: CID.to_string(),
            }),
        })
    }

    #[test]
    fn cgroupfs_driver_all_three_classes_v1_and_v2() {
        let cases = [
            (format!("0::/kubepods/pod{UID}/{CID}"), Qos::Guaranteed),
            (
                format!("4:cpu,cpuacct:/kubepods/pod{UID}/{CID}"),
                Qos::Guaranteed,
            ),
            (
                format!("0::/kubepods/burstable/pod{UID}/{CID}"),
                Qos::Burstable,
            ),
            (
                format!("11:blkio:/kubepods/burstable/pod{UID}/{CID}"),
                Qos::Burstable,
            ),
            (
                format!("0::/kubepods/besteffort/pod{UID}/{CID}"),
                Qos::BestEffort,
            ),
            (
                format!("1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}"),
                Qos::BestEffort,
            ),
        ];
        for (line, qos) in cases {
            assert_eq!(pod_of(&line), pod(Some(qos), None), "{line}");
        }
    }

    #[test]
    fn systemd_driver_all_three_classes_and_runtimes() {
        let containerd = format!("cri-containerd-{CID}.scope");
        let crio = format!("crio-{CID}.scope");
        let docker = format!("docker-{CID}.scope");
        let cases = [
            (
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/{containerd}"),
                Qos::Guaranteed,
                "containerd",
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{crio}"
                ),
                Qos::Burstable,
                "cri-o",
            ),
            (
                format!(
                    "3:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/{docker}"
                ),
                Qos::BestEffort,
                "docker",
            ),
            (
                format!(
                    "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{containerd}"
                ),
                Qos::Burstable,
                "containerd",
            ),
            (
                format!("7:pids:/kubepods.slice/kubepods-pod{UID_}.slice/{crio}"),
                Qos::Guaranteed,
                "cri-o",
            ),
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/{docker}"
                ),
                Qos::BestEffort,
                "docker",
            ),
        ];
        for (line, qos, runtime) in cases {
            assert_eq!(pod_of(&line), pod(Some(qos), Some(runtime)), "{line}");
        }
    }

    #[test]
    fn cgroupfs_crio_names_its_containers() {
        let line = format!("0::/kubepods/burstable/pod{UID}/crio-{CID}");
        assert_eq!(pod_of(&line), pod(Some(Qos::Burstable), Some("cri-o")));
    }

    #[test]
    fn a_cgroup_root_prefix_as_kind_has_it() {
        // kind: the node is a docker container; kubelet --cgroup-root=/kubelet.
        let line = format!(
            "0::/system.slice/docker-fd9d0ea06257a9780827cbc7fd92e3812a54fca26d63e191b73610d5d48b9cbd.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            pod_of(&line),
            pod(Some(Qos::BestEffort), Some("containerd")),
            "the node's own docker scope is above the pod, not its container"
        );
        let line = format!("0::/kubelet/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(pod_of(&line), pod(Some(Qos::Burstable), None));
    }

    #[test]
    fn pod_level_process_has_no_container() {
        for line in [
            format!("0::/kubepods/besteffort/pod{UID}"),
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice"),
            format!("0::/kubepods/pod{UID}/not-an-id"),
        ] {
            let found = pod_of(&line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(found.uid, UID);
            assert_eq!(found.container, None, "{line}");
        }
    }

    #[test]
    fn nested_scopes_give_the_innermost_container() {
        let outer = "aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000aaaa0000";
        let cases = [
            // crun's nested cgroup under the container's scope (cgroup v2)
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope/container"
            ),
            // systemd inside the container
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/init.scope"),
            format!(
                "0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{outer}.scope/crio-{CID}.scope"
            ),
            // conmon watches the container its scope names
            format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope"),
        ];
        for line in cases {
            let found = pod_of(&line).unwrap_or_else(|| panic!("{line}"));
            let container = found.container.unwrap_or_else(|| panic!("{line}"));
            assert_eq!(
                (container.runtime, container.id.as_str()),
                (Some("cri-o"), CID),
                "{line}"
            );
        }
    }

    #[test]
    fn paths_seen_from_inside_a_cgroup_namespace() {
        let cases = [
            // a sibling pod of the reader's, same class: the class is not shown
            (format!("0::/../../pod{UID}/{CID}"), None, None),
            (
                format!("0::/../../../besteffort/pod{UID}/{CID}"),
                Some(Qos::BestEffort),
                None,
            ),
            (
                format!("0::/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                Some(Qos::Burstable),
                Some("containerd"),
            ),
            (
                format!(
                    "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope"
                ),
                Some(Qos::BestEffort),
                Some("docker"),
            ),
            // below the namespace root: the top is cut off, no `..`
            (
                format!("0::/burstable/pod{UID}/{CID}"),
                Some(Qos::Burstable),
                None,
            ),
            (
                format!("0::/kubepods-pod{UID_}.slice/crio-{CID}.scope"),
                Some(Qos::Guaranteed),
                Some("cri-o"),
            ),
            // relative, no leading slash
            (
                format!("0::kubepods/besteffort/pod{UID}/{CID}"),
                Some(Qos::BestEffort),
                None,
            ),
        ];
        for (line, qos, runtime) in cases {
            assert_eq!(pod_of(&line), pod(qos, runtime), "{line}");
        }
    }

    #[test]
    fn not_pods() {
        let cases = [
            "0::/".to_string(),
            "0::/init.scope".to_string(),
            "0::/system.slice/containerd.service".to_string(),
            "1:name=systemd:/user.slice/user-0.slice/session-3.scope".to_string(),
            format!("0::/system.slice/docker-{CID}.scope"),
            format!("0::/machine.slice/libpod-{CID}.scope/container"),
            "4:memory:/process_api/67b5d59fdf93178143a646639d92808a".to_string(),
            // the word, but not where the kubelet puts it
            format!("0::/system.slice/pod{UID}/{CID}"),
            format!("0::/kubepods/guaranteed/pod{UID}/{CID}"),
            format!("0::/other/burstable/pod{UID}/{CID}"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/mykubepods-burstable-pod{UID_}.slice"
            ),
            format!("0::/system.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice"
            ),
            format!("0::/kubepods.slice/kubepods-pod{UID_}.service"),
            // containerd's cgroupsPath written literally (`slice:prefix:id`)
            format!(
                "13:memory:/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}"
            ),
            // malformed UIDs: static pods' hashes, wrong escaping, short, bad digit
            "0::/kubepods/burstable/pod5a6e1fa3b0e7d0a0f4c5b8a7c1d2e3f4/c1".to_string(),
            format!("0::/kubepods/burstable/pod{UID_}/{CID}"),
            format!("0::/kubepods.slice/kubepods-pod{UID}.slice"),
            "0::/kubepods/pode03401ab-1ff2-44e3-8260-3d175888e4a/c1".to_string(),
            "0::/kubepods/pode03401ab-1ff2-44e3-8260-3d175888e4ag/c1".to_string(),
            "0::/kubepods/pode03401ab1ff2-44e3-8260-3d175888e4a7-/c1".to_string(),
            // not a /proc/<pid>/cgroup line
            format!("/kubepods/pod{UID}/{CID}"),
            format!("x::/kubepods/pod{UID}/{CID}"),
            String::new(),
        ];
        for line in cases {
            assert_eq!(pod_of(&line), None, "{line}");
        }
    }

    #[test]
    fn a_hybrid_host_file_picks_the_kubepods_lines() {
        // This machine's shape (v1 controllers, name=systemd, v2 unified),
        // with the pod in some hierarchies only and one odd literal line.
        let file = format!(
            "9:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n\
             8:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n\
             7:blkio:/\n\
             6:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice\n\
             5:devices:/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}\n\
             4:memory:/process_api/67b5d59fdf93178143a646639d92808a\n\
             3:cpuset:/\n\
             2:cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n\
             0::/\n"
        );
        assert_eq!(pod_of(&file), pod(Some(Qos::Burstable), Some("containerd")));

        // A container-level line wins over a pod-level one wherever it is.
        let file = format!(
            "0::/../../pod{UID}\n1:name=systemd:/\n4:cpu:/kubepods/besteffort/pod{UID}/{CID}\n"
        );
        assert_eq!(pod_of(&file), pod(Some(Qos::BestEffort), None));

        let host = "9:name=systemd:/init.scope\n8:pids:/init.scope\n0::/init.scope\n";
        assert_eq!(pod_of(host), None);
    }

    #[test]
    fn uids_are_canonical_lowercase() {
        assert_eq!(parse_uid(UID).as_deref(), Some(UID));
        assert_eq!(
            parse_uid("E03401AB-1FF2-44E3-8260-3D175888E4A7").as_deref(),
            Some(UID)
        );
        let upper = format!("0::/kubepods/pod{}/{CID}", UID.to_uppercase());
        assert_eq!(pod_of(&upper).map(|p| p.uid).as_deref(), Some(UID));
        for bad in [
            "",
            UID_,
            "e03401ab1ff244e382603d175888e4a7",
            "e03401ab-1ff2-44e3-8260-3d175888e4a7 ",
            "{e03401ab-1ff2-44e3-8260-3d175888e4a7}",
            "e03401ab-1ff2-44e3-8260-3d175888e4a77",
            "e03401ab-1ff2-44e3-8260-3d175888e4az",
            "e03401a-b1ff2-44e3-8260-3d175888e4a7",
            "é03401ab-1ff2-44e3-8260-3d175888e4a",
        ] {
            assert_eq!(parse_uid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn qos_spelled_as_the_api_does() {
        let names: Vec<&str> = [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort]
            .into_iter()
            .map(Qos::as_str)
            .collect();
        assert_eq!(names, ["Guaranteed", "Burstable", "BestEffort"]);
    }
}

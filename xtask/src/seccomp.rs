//! The seccomp profile shipped in deploy/seccomp/: the container runtime's
//! default profile (podman's, /usr/share/containers/seccomp.json) resolved
//! for the sidecar's capabilities and architecture, plus bpf(2).
//!
//! Resolving means: keep the rules that apply to a container holding only
//! CAP_BPF and CAP_PERFMON on x86-64, and drop the `includes`/`excludes`
//! conditions. The result is a plain list of rules, which both podman/CRI-O
//! and containerd (whose kubelet Localhost profiles are read as the OCI
//! runtime spec's `LinuxSeccomp`, without those conditions) apply alike.
//! The default lets bpf(2) through only with CAP_SYS_ADMIN; the tracker
//! needs it with CAP_BPF. Nothing else is added: the program attaches
//! through bpf(2) (BPF_RAW_TRACEPOINT_OPEN), not perf_event_open(2).
//!
//! Node mode also needs setns(2) (sock_diag inside each pod's namespace).
//! The default already allows it: its unconditional allow list names
//! setns, and so does its refusal for containers without CAP_SYS_ADMIN,
//! listed later. runc applies the first entry that matches a syscall, so
//! that refusal never applies to setns; we drop the dead name from it so
//! the profile means the same to a runtime that resolved the duplicate
//! otherwise. The derivation fails if the default ever stops allowing
//! what the tracker calls (`NEEDED`).
use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::build::workspace_root;

pub const RUNTIME_DEFAULT: &str = "/usr/share/containers/seccomp.json";
const CAPS: [&str; 2] = ["CAP_BPF", "CAP_PERFMON"];
const ARCHES: [&str; 3] = ["amd64", "x86", "x32"];
const ADDED: &str = "bpf";
/// What the tracker calls that the default refuses to some containers:
/// bpf(2) (every eBPF mode) and setns(2) (node mode).
const NEEDED: [&str; 2] = [ADDED, "setns"];

pub fn path() -> PathBuf {
    workspace_root().join("deploy/seccomp/spawner-sidecar.json")
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether a rule of the default profile applies to our container.
fn applies(rule: &Value) -> bool {
    let inc = rule.get("includes");
    let exc = rule.get("excludes");
    let inc_caps = strings(inc.and_then(|i| i.get("caps")));
    let inc_arches = strings(inc.and_then(|i| i.get("arches")));
    let exc_caps = strings(exc.and_then(|e| e.get("caps")));
    let exc_arches = strings(exc.and_then(|e| e.get("arches")));
    let has_min_kernel = inc.and_then(|i| i.get("minKernel")).is_some();
    inc_caps.iter().all(|c| CAPS.contains(c))
        && (inc_arches.is_empty() || inc_arches.iter().any(|a| ARCHES.contains(a)))
        && !exc_caps.iter().any(|c| CAPS.contains(c))
        && !exc_arches.iter().any(|a| ARCHES.contains(a))
        && !has_min_kernel
}

/// The profile derived from the runtime's default profile text.
pub fn derive(default_profile: &str) -> anyhow::Result<Value> {
    let mut profile: Value =
        serde_json::from_str(default_profile).context("the default profile is not JSON")?;
    let Some(obj) = profile.as_object_mut() else {
        bail!("the default profile is not a JSON object");
    };
    if let Some(arches) = obj.get_mut("archMap").and_then(Value::as_array_mut) {
        arches.retain(|a| a["architecture"] == "SCMP_ARCH_X86_64");
    }
    let Some(rules) = obj.get_mut("syscalls").and_then(Value::as_array_mut) else {
        bail!("the default profile has no syscalls list");
    };
    rules.retain(applies);
    for rule in rules.iter_mut() {
        let Some(r) = rule.as_object_mut() else {
            continue;
        };
        r.remove("includes");
        r.remove("excludes");
        // The default refuses bpf(2) without CAP_SYS_ADMIN: that refusal
        // is the one thing we lift.
        if r.get("action").and_then(Value::as_str) != Some("SCMP_ACT_ALLOW")
            && let Some(names) = r.get_mut("names").and_then(Value::as_array_mut)
        {
            names.retain(|n| n != ADDED);
        }
    }
    drop_shadowed_refusals(rules);
    rules.retain(|r| !strings(r.get("names")).is_empty());
    if rules
        .iter()
        .any(|r| r["action"] == "SCMP_ACT_ALLOW" && strings(r.get("names")).contains(&ADDED))
    {
        bail!("the resolved default profile already allows {ADDED}: nothing to add");
    }
    rules.push(json!({
        "names": [ADDED],
        "action": "SCMP_ACT_ALLOW",
        "args": [],
        "comment": "spawner-sidecar: load its eBPF program and read its maps (with CAP_BPF, CAP_PERFMON)"
    }));
    for name in NEEDED {
        if first_rule_for(rules, name).and_then(|r| r["action"].as_str()) != Some("SCMP_ACT_ALLOW")
        {
            bail!("the derived profile does not allow {name}(2), which the tracker calls");
        }
    }
    Ok(profile)
}

/// The first rule naming `name`: the one runc applies.
fn first_rule_for<'a>(rules: &'a [Value], name: &str) -> Option<&'a Value> {
    rules
        .iter()
        .find(|r| strings(r.get("names")).contains(&name))
}

/// Removes from refusing rules the names an earlier unconditional allow
/// rule already lets through (dead under runc's first-match order).
fn drop_shadowed_refusals(rules: &mut [Value]) {
    let mut allowed: Vec<String> = Vec::new();
    for rule in rules.iter_mut() {
        let unconditional = rule
            .get("args")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty());
        let allows = rule.get("action").and_then(Value::as_str) == Some("SCMP_ACT_ALLOW");
        let Some(names) = rule.get_mut("names").and_then(Value::as_array_mut) else {
            continue;
        };
        if allows && unconditional {
            allowed.extend(names.iter().filter_map(Value::as_str).map(str::to_string));
        } else if !allows && unconditional {
            names.retain(|n| n.as_str().is_none_or(|n| !allowed.iter().any(|a| a == n)));
        }
    }
}

fn derived_text() -> anyhow::Result<String> {
    let default_profile = fs::read_to_string(RUNTIME_DEFAULT).with_context(|| {
        format!("cannot read {RUNTIME_DEFAULT} (package golang-github-containers-common)")
    })?;
    Ok(serde_json::to_string_pretty(&derive(&default_profile)?)? + "\n")
}

/// `cargo xtask seccomp`: (re)writes the shipped profile.
pub fn write() -> anyhow::Result<()> {
    crate::image::ensure_podman()?;
    let text = derived_text()?;
    let path = path();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("[seccomp] wrote {} from {RUNTIME_DEFAULT}", path.display());
    Ok(())
}

/// The shipped profile must be what this machine's default derives to.
pub fn check() -> anyhow::Result<()> {
    let shipped =
        fs::read_to_string(path()).with_context(|| format!("cannot read {}", path().display()))?;
    if shipped != derived_text()? {
        bail!(
            "{} differs from what {RUNTIME_DEFAULT} derives to; run `cargo xtask seccomp` and review the diff",
            path().display()
        );
    }
    println!(
        "[seccomp] {} matches {RUNTIME_DEFAULT} plus bpf(2)",
        path().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of containers-common's default, reduced to what matters.
    fn default_with(allowed: &[&str]) -> String {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": allowed, "action": "SCMP_ACT_ALLOW", "args": []},
                {"names": ["bpf", "setns", "sethostname"], "action": "SCMP_ACT_ALLOW", "args": [],
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["bpf", "setns", "sethostname"], "action": "SCMP_ACT_ERRNO", "args": [],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}, "errnoRet": 1},
            ]
        })
        .to_string()
    }

    fn names(rule: &Value) -> Vec<&str> {
        strings(rule.get("names"))
    }

    #[test]
    fn a_refusal_shadowed_by_an_earlier_allow_loses_the_name_and_bpf_is_added() {
        let profile = derive(&default_with(&["read", "setns"])).expect("derives");
        let rules = profile["syscalls"].as_array().expect("a list");
        assert_eq!(rules.len(), 3, "{profile:#}");
        assert_eq!(names(&rules[0]), ["read", "setns"]);
        // The CAP_SYS_ADMIN-only allow is gone; the refusal keeps only what
        // nothing allowed before it.
        assert_eq!(rules[1]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(names(&rules[1]), ["sethostname"]);
        assert_eq!(names(&rules[2]), ["bpf"]);
        assert_eq!(rules[2]["action"], "SCMP_ACT_ALLOW");
    }

    #[test]
    fn a_default_that_refuses_setns_fails_the_derivation() {
        let err = derive(&default_with(&["read"])).expect_err("must fail");
        assert!(err.to_string().contains("setns"), "{err}");
    }
}

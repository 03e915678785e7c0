//! The validated description of every service: from ynetd's YAML file and
//! the command line (one more service when `-proxy` is given), with ynetd's
//! defaults. Errors are one line naming the bad key or flag.
use std::time::Duration;

use super::{
    Args,
    address::{Listen, Route, Target, parse_pairs},
    admission::Admission,
    args::is_toml,
    signal::Signal,
    tracker, yaml,
};
use crate::{duration::parse_duration, source::peers::PeerNet};

/// ynetd's default `timeout`: how long a client may wait for the service.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

pub type CheckUrl = crate::heartbeat::target::Target;

/// An `http://host[:port]/path` URL for the readiness check (the
/// heartbeat's parser and checker; `https://` would need its TLS set-up,
/// which a check of a service we start next to us does not).
pub fn parse_check_url(text: &str) -> Result<CheckUrl, String> {
    let url: CheckUrl = text.parse().map_err(|e| format!("`{text}`: {e}"))?;
    if url.scheme != crate::heartbeat::target::Scheme::Http {
        return Err(format!("`{text}`: only http:// URLs are checked"));
    }
    Ok(url)
}

/// What an idle service gets after `stop_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdleAction {
    /// `stop_signal`, then SIGKILL after `stop_timeout`.
    Stop,
    /// SIGSTOP to the process group; SIGCONT when a client comes (no cold
    /// start: the process keeps its memory, and its port).
    Freeze,
}

impl IdleAction {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "stop" => Ok(Self::Stop),
            "freeze" => Ok(Self::Freeze),
            other => Err(format!("`{other}` is not stop or freeze")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// For logs, the status page and its URLs.
    pub name: String,
    pub routes: Vec<Route>,
    /// Program and arguments; empty for a plain forwarder.
    pub command: Vec<String>,
    pub auto_start: bool,
    /// `None`: never stop for idleness.
    pub stop_after: Option<Duration>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub timeout: Duration,
    pub wait_after_start: Duration,
    /// No idle stop before this long after a start.
    pub min_online: Duration,
    pub admission: Admission,
    /// A stopped service starts only once a client has sent a byte.
    pub wake_on_data: bool,
    pub idle_action: IdleAction,
    /// hibergate's shape: a shell command that starts the backend
    /// elsewhere (instead of `command`), and one that stops it.
    pub start: Option<String>,
    pub stop: Option<String>,
    /// Readiness also needs this `http://` URL to answer 200-399.
    pub check_url: Option<CheckUrl>,
}

impl ServiceSpec {
    /// Nothing to start: a plain port forwarder.
    pub fn is_forwarder(&self) -> bool {
        self.command.is_empty() && self.start.is_none()
    }

    /// Rules between keys.
    fn check(&self) -> Result<(), String> {
        if !self.command.is_empty() && self.start.is_some() {
            return Err("a command and a start command: give one".into());
        }
        if self.stop.is_some() && self.start.is_none() {
            return Err("a stop command needs a start command".into());
        }
        if self.idle_action == IdleAction::Freeze && self.command.is_empty() {
            return Err("idle action freeze needs a command (a process to freeze)".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct ProxyConfig {
    pub services: Vec<ServiceSpec>,
    pub shutdown_timeout: Duration,
    pub tracker: tracker::Settings,
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn duration(
    service: &str,
    key: &str,
    text: Option<&String>,
    default: Duration,
) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(t).map_err(|e| format!("{service}: {key}: {e}")),
    }
}

/// Default service name: where its first listener is, e.g. `port-8080`.
fn default_name(routes: &[Route], index: usize) -> String {
    match routes.first().map(|r| &r.listen) {
        Some(listen) => format!("port-{}", listen.port()),
        None => format!("service-{index}"),
    }
}

fn from_yaml(
    index: usize,
    s: yaml::Service,
    stop_timeout: Duration,
) -> Result<ServiceSpec, String> {
    let label = format!("services[{index}]");
    let mut routes = Vec::with_capacity(s.proxy.len());
    for (listen, target) in &s.proxy {
        routes.push(Route {
            listen: Listen::parse(listen).map_err(|e| format!("{label}: proxy: {e}"))?,
            target: Target::parse(target).map_err(|e| format!("{label}: proxy: {e}"))?,
        });
    }
    if routes.is_empty() {
        return Err(format!("{label}: proxy: no address pair"));
    }
    let stop_signal = match &s.stop_signal {
        None => Signal::TERM,
        Some(t) => Signal::parse(t).map_err(|e| format!("{label}: stop_signal: {e}"))?,
    };
    let nets = |key: &str, list: &[String]| -> Result<Vec<PeerNet>, String> {
        list.iter()
            .map(|n| n.parse().map_err(|e| format!("{label}: {key}: {e}")))
            .collect()
    };
    let admission = Admission::new(nets("allow", &s.allow)?, nets("deny", &s.deny)?);
    Ok(ServiceSpec {
        min_online: duration(&label, "min_online", s.min_online.as_ref(), Duration::ZERO)?,
        admission,
        wake_on_data: s.wake_on_data,
        check_url: s
            .check_url
            .as_deref()
            .map(parse_check_url)
            .transpose()
            .map_err(|e| format!("{label}: check_url: {e}"))?,
        start: s.start,
        stop: s.stop,
        idle_action: match &s.idle_action {
            None => IdleAction::Stop,
            Some(t) => IdleAction::parse(t).map_err(|e| format!("{label}: idle_action: {e}"))?,
        },
        name: s
            .name
            .clone()
            .unwrap_or_else(|| default_name(&routes, index)),
        routes,
        command: s.command,
        auto_start: s.auto_start,
        stop_after: nonzero(duration(
            &label,
            "stop_after",
            s.stop_after.as_ref(),
            Duration::ZERO,
        )?),
        stop_signal,
        stop_timeout: duration(
            &label,
            "stop_timeout",
            s.stop_timeout.as_ref(),
            stop_timeout,
        )?,
        timeout: duration(&label, "timeout", s.timeout.as_ref(), DEFAULT_TIMEOUT)?,
        wait_after_start: duration(
            &label,
            "wait_after_start",
            s.wait_after_start.as_ref(),
            Duration::ZERO,
        )?,
    })
}

/// Every service, the file's first. Errors are one line.
pub fn build(args: &Args) -> Result<ProxyConfig, String> {
    let mut services = Vec::new();
    // A TOML file is a layer of the flags, read with them (`cli`).
    for path in args.config.iter().filter(|p| !is_toml(p)) {
        let file = yaml::read(path)?;
        for (i, s) in file.services.into_iter().enumerate() {
            services.push(
                from_yaml(i, s, args.stop_timeout)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?,
            );
        }
    }
    if args.proxy.is_empty() {
        if !args.command.is_empty() {
            return Err("-proxy is required with a command".into());
        }
    } else {
        let mut routes = Vec::new();
        for spec in &args.proxy {
            routes.extend(parse_pairs(spec, &args.proxy_sep)?);
        }
        services.push(ServiceSpec {
            name: default_name(&routes, services.len()),
            routes,
            command: args.command.clone(),
            auto_start: args.auto_start,
            stop_after: nonzero(args.stop_after),
            stop_signal: args.stop_signal,
            stop_timeout: args.stop_timeout,
            timeout: args.timeout,
            wait_after_start: args.wait_after_start,
            min_online: args.min_online,
            admission: Admission::new(args.allow.clone(), args.deny.clone()),
            wake_on_data: args.wake_on_data,
            idle_action: args.idle_action,
            check_url: args.check_url.clone(),
            start: args.start_command.clone(),
            stop: args.stop_command.clone(),
        });
    }
    if services.is_empty() {
        return Err("nothing to proxy: give -proxy \"LISTEN TARGET\" or -config FILE.yaml".into());
    }
    for s in &services {
        s.check().map_err(|e| format!("service {}: {e}", s.name))?;
    }
    // Names address services in URLs: they must be unique.
    for (i, s) in services.iter().enumerate() {
        if services[..i].iter().any(|o| o.name == s.name) {
            return Err(format!(
                "two services are named `{}`: give one a `name:` in the config file",
                s.name
            ));
        }
    }
    let tracker = tracker::Settings {
        source: args.source,
        kernel_btf: args.kernel_btf.clone(),
        ignore_peer: args.ignore_peer.clone(),
        activity_min_age: args.activity_min_age,
    };
    tracker.check()?;
    Ok(ProxyConfig {
        services,
        shutdown_timeout: args.shutdown_timeout,
        tracker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_service(text: &str) -> Result<ServiceSpec, String> {
        let mut file = yaml::parse(text)?;
        from_yaml(0, file.services.remove(0), Duration::from_secs(10))
    }

    #[test]
    fn yaml_values_become_a_spec_with_ynetd_defaults() {
        let s = yaml_service("services:\n  - proxy: {':5000': 'localhost:5001'}\n").expect("ok");
        assert_eq!(s.name, "port-5000");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.stop_after, None);
        assert_eq!(s.stop_signal, Signal::TERM);
        let s = yaml_service(
            "services:\n  - proxy: {':5000': 'localhost:5001'}\n    stop_after: 10m\n    stop_signal: INT\n",
        )
        .expect("ok");
        assert_eq!(s.stop_after, Some(Duration::from_secs(600)));
        assert_eq!(s.stop_signal, Signal(libc::SIGINT));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("    stop_after: soon\n", "stop_after"),
            ("    stop_signal: NOPE\n", "stop_signal"),
            ("    wait_after_start: 1x\n", "wait_after_start"),
        ] {
            let e = yaml_service(&format!("services:\n  - proxy: {{':1': 'a:2'}}\n{text}"))
                .expect_err(key);
            assert!(e.contains(key), "{e}");
        }
        let e = yaml_service("services:\n  - proxy: {'nope': 'a:2'}\n").expect_err("address");
        assert!(e.contains("`nope`"), "{e}");
    }
}

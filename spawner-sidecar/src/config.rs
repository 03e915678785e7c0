//! Command line and environment -> one validated [`Config`]. Every flag can
//! also be set as `SPAWNER_SIDECAR_<FLAG>`; a flag wins over its variable.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::source::{SourceChoice, SourceOptions};

/// The daemon's flags; parsed as part of [`crate::cli::Cli`].
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// TCP port to watch
    #[arg(long, env = "SPAWNER_SIDECAR_MONITOR_PORT", default_value_t = 8080,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub monitor_port: u16,

    /// tick for polling sources, logs and actions
    #[arg(long, env = "SPAWNER_SIDECAR_REFRESH_RATE_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub refresh_rate_seconds: u64,

    /// HTTP port for the JSON API (0 picks a free port and logs it)
    #[arg(long, env = "SPAWNER_SIDECAR_SERVE_PORT", default_value_t = 7070)]
    pub serve_port: u16,

    /// Address the HTTP API listens on
    #[arg(long, env = "SPAWNER_SIDECAR_SERVE_ADDRESS", default_value = "0.0.0.0")]
    pub serve_address: IpAddr,

    /// Where connection counts come from; auto picks the best that works here
    #[arg(long, env = "SPAWNER_SIDECAR_SOURCE", value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,

    /// Kernel BTF to take struct offsets from, for kernels that keep it elsewhere
    #[arg(long, env = "SPAWNER_SIDECAR_KERNEL_BTF", default_value = crate::kernel_btf::VMLINUX_BTF)]
    pub kernel_btf: PathBuf,
}

impl Config {
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_rate_seconds)
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            ports: vec![self.monitor_port],
            kernel_btf: self.kernel_btf.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser as _, error::ErrorKind};

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        crate::cli::Cli::try_parse_from(
            std::iter::once("spawner-sidecar").chain(args.iter().copied()),
        )
        .map(|cli| cli.daemon)
    }

    #[test]
    fn defaults_match_the_original() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(
            (c.monitor_port, c.refresh_rate_seconds, c.serve_port),
            (8080, 10, 7070)
        );
        assert_eq!(c.serve_address.to_string(), "0.0.0.0");
        assert_eq!(c.source, SourceChoice::Auto);
    }

    #[test]
    fn rejects_bad_values_with_clap_errors() {
        for args in [
            &["--monitor-port", "0"][..],
            &["--monitor-port", "65536"],
            &["--monitor-port", "http"],
            &["--refresh-rate-seconds", "0"],
            &["--serve-address", "nowhere"],
            &["--source", "magic"],
        ] {
            let err = parse(args).expect_err("must fail");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::ValueValidation | ErrorKind::InvalidValue
                ),
                "{args:?}"
            );
        }
    }

    #[test]
    fn accepts_every_source_name() {
        for (name, want) in [
            ("auto", SourceChoice::Auto),
            ("ebpf", SourceChoice::Ebpf),
            ("sock-diag", SourceChoice::SockDiag),
            ("proc", SourceChoice::Proc),
        ] {
            assert_eq!(parse(&["--source", name]).expect(name).source, want);
        }
    }
}

//! Trust for https:// checks: the system's roots (or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` instead, as OpenSSL does), plus the CAs of `--ca-file`.
//! Certificates and host names are always verified; there is no switch to
//! turn that off.
use std::{path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    client::Resumption,
    pki_types::{CertificateDer, pem::PemObject as _},
};
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

/// The certificates of `--ca-file`, read and checked while parsing the
/// command line so that a bad file is a usage error at start.
#[derive(Debug, Clone)]
pub struct CaFile {
    pub path: PathBuf,
    certs: Vec<CertificateDer<'static>>,
}

impl CaFile {
    /// clap value parser: every PEM certificate in the file, at least one,
    /// each usable as a trust anchor.
    pub fn load(path: &str) -> Result<CaFile, String> {
        let path = PathBuf::from(path);
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no PEM certificate in {}", path.display()));
        }
        let mut probe = RootCertStore::empty();
        for cert in &certs {
            probe
                .add(cert.clone())
                .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
        }
        Ok(CaFile { path, certs })
    }
}

/// A connector for every https:// check. Built once: loading the system
/// store reads and parses a few hundred kilobytes.
pub fn connector(ca_file: Option<&CaFile>) -> Result<TlsConnector, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        warn!("loading the system's trust roots: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(added, ignored, "system trust roots");
    if let Some(ca) = ca_file {
        for cert in &ca.certs {
            // Checked when the flag was parsed; a failure here is a file
            // that changed since, and the remaining roots still work.
            if let Err(e) = roots.add(cert.clone()) {
                warn!(path = %ca.path.display(), "skipping a CA certificate: {e}");
            }
        }
    }
    if roots.is_empty() {
        warn!(
            "no trust roots: every https:// check will fail; install a CA bundle, \
             set SSL_CERT_FILE or pass --ca-file"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every check is a full handshake: a resumed TLS 1.3 session skips the
    // certificate, so a server whose certificate expired or was replaced by
    // an untrusted one would keep passing.
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_one_line_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("hb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (path, want) in [
            (dir.join("missing.pem"), "cannot read CA certificates"),
            (empty, "no PEM certificate"),
            (garbage, "unusable CA certificate"),
        ] {
            let text = path.to_string_lossy().into_owned();
            let err = CaFile::load(&text).expect_err(&text);
            assert!(err.contains(want) && err.contains(&text), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

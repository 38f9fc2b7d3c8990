//! The TLS client configuration of a directory connection: the system roots and the
//! connection's own CA certificates, with the tree's one crypto provider (aws-lc-rs).

use std::sync::{Arc, LazyLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The system's trusted roots, read once.
static SYSTEM_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system root certificate could not be read");
    }
    found.certs
});

/// The client configuration trusting the system roots and the PEM certificates `extra`.
pub(crate) fn config(extra: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(SYSTEM_ROOTS.iter().cloned());
    if ignored > 0 {
        tracing::debug!(ignored, "system root certificates rustls cannot use");
    }
    if !extra.trim().is_empty() {
        for cert in CertificateDer::pem_slice_iter(extra.as_bytes()) {
            let cert = cert.map_err(|e| format!("ca_certificates: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca_certificates: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

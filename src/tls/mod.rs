//! TLS termination: certificates chosen by SNI from the live snapshot, and the SNI a client sent
//! remembered per connection for the Host/SNI consistency check.

mod certs;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use certs::{
    name_covers, parse_ca_bundle, parse_pair, CaBundle, CertProblem, LoadedCert, Part,
};

use crate::snapshot::SharedSnapshot;

/// Picks the certificate for each handshake from the snapshot serving at that moment, so a
/// reload changes certificates for new handshakes while open connections keep theirs.
#[derive(Debug)]
pub struct SniResolver {
    snapshot: Arc<SharedSnapshot>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.snapshot.load().certificate_for(hello.server_name());
        if cert.is_none() {
            crate::metrics::get().tls_refused("no_certificate");
            tracing::debug!(
                sni = hello.server_name(),
                "no certificate for this name; handshake refused"
            );
        }
        cert
    }
}

/// The SNI of a TLS connection, lowercase; stored in the connection's TLS digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSni(pub String);

struct RememberSni;

#[async_trait]
impl TlsAccept for RememberSni {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        crate::metrics::get().tls_handshakes.inc();
        let name = tls.server_name()?;
        Some(Arc::new(ClientSni(name.to_ascii_lowercase())))
    }
}

/// Listener settings: TLS 1.2 and 1.3 (pingora's rustls defaults, strong suites only), ALPN h2
/// then http/1.1, certificates from the snapshot.
pub fn listener_settings(snapshot: Arc<SharedSnapshot>) -> pingora::Result<TlsSettings> {
    let mut settings = TlsSettings::with_callbacks(Box::new(RememberSni))?;
    settings.set_cert_resolver(Arc::new(SniResolver { snapshot }));
    settings.enable_h2();
    Ok(settings)
}

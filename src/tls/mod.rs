//! TLS termination: certificates chosen by SNI from the live snapshot, session resumption, and
//! the SNI a client sent remembered per connection for the Host/SNI consistency check. `conn`
//! runs the handshake, after the connection caps and under `header_timeout`.

mod certs;

use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::TlsAccept;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::server::handshake_with_callback;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::Stream;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache,
};
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
            // Counted by `failure_reason`, with the handshake it ends.
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

/// How TLS sessions are resumed: stateless tickets, and a cache of sessions by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// Issue session tickets (keys made at start, rotated by rustls every 6 hours, kept in
    /// memory only).
    pub tickets: bool,
    /// Sessions kept for resumption by id (TLS 1.2 clients without tickets, or all clients
    /// when tickets are off); 0 keeps none.
    pub cache: usize,
}

/// The TLS acceptor of every `listen_tls` listener: TLS 1.2 and 1.3 with rustls's default
/// (strong) suites, ALPN h2 then http/1.1 (and http/1.0), certificates from the snapshot by
/// SNI. Built here rather than by pingora's `TlsSettings`, which offers no session tickets and
/// a 256-entry session cache.
pub fn acceptor(
    snapshot: Arc<SharedSnapshot>,
    resumption: Resumption,
) -> Result<Acceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { snapshot }));
    // A client that offers only http/1.0 is served too (rustls refuses a handshake whose
    // offers it has none of), as nginx does.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    config.session_storage = match resumption.cache {
        0 => Arc::new(NoServerSessionStorage {}),
        n => ServerSessionMemoryCache::new(n),
    };
    if resumption.tickets {
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    }
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

/// What rustls says when the resolver above found no certificate.
const NO_CERTIFICATE: &str = "no server certificate chain resolved";

/// Why a handshake failed, as `porteiro_tls_handshake_failures_total` counts it: no
/// certificate for the name, or anything else the client did (garbage, an old protocol, a
/// handshake abandoned). pingora keeps only the text of rustls's error, so the text it is.
pub fn failure_reason(e: &pingora::Error) -> &'static str {
    if e.to_string().contains(NO_CERTIFICATE) {
        "no_certificate"
    } else {
        "handshake"
    }
}

/// The TLS handshake of an accepted connection; the SNI is kept in the connection's digest.
pub async fn handshake(acceptor: &Acceptor, tcp: L4Stream) -> pingora::Result<Stream> {
    let tls = handshake_with_callback(acceptor, tcp, &RememberSni).await?;
    Ok(Box::new(tls))
}

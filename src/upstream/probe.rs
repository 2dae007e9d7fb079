//! Active health probes: a TCP connect, or an HTTP/1.1 GET (plain or over TLS) whose status
//! must be 2xx or 3xx.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::tls::TlsConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::model::Probe;

/// Runs one probe within `timeout`. `Err` carries a short reason for the log.
pub async fn run(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(addr, probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

async fn attempt(addr: SocketAddr, probe: &Probe) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path, host } => http_get(stream, path, host).await,
        Probe::Https { path, host, sni } => {
            let name = ServerName::try_from(sni.clone())
                .map_err(|_| format!("`{sni}` is not a valid TLS server name"))?;
            let stream = TlsConnector::from(unverified_client()?)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            http_get(stream, path, host).await
        }
    }
}

/// A client config that completes handshakes without judging the certificate: the probe asks
/// "is it up", and real requests verify (failing with 502 and a passive failure).
fn unverified_client() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    Arc::new(
                        b.dangerous()
                            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                            .with_no_client_auth(),
                    )
                })
                .map_err(|e| format!("TLS client setup: {e}"))
        })
        .clone()
}

/// Takes any certificate (signatures still checked against it): for health checks of pools
/// with `insecure_skip_verify`, and for load generators that only measure.
#[derive(Debug)]
pub struct AcceptAny(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    host: &str,
) -> Result<(), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: porteiro-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // The status line is all we need; read until its end, at most 1 KiB.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    match parse_status(&buf) {
        Some(status) if (200..400).contains(&status) => Ok(()),
        Some(status) => Err(format!("GET {path} answered {status}")),
        None => Err(format!("GET {path}: no HTTP status line in the answer")),
    }
}

/// `HTTP/1.1 204 No Content` -> 204.
pub fn parse_status(buf: &[u8]) -> Option<u16> {
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(buf.len());
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 503 Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}

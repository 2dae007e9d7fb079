//! Certificates and keys as porteiro loads them: PEM parsing, the key/certificate match, the
//! validity window, and which hostnames a certificate covers. Everything that can be wrong with
//! a certificate file is found here, at load time, so no listener ever starts with a bad one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::config::model::HostPattern;
use crate::hash::stable_hash;

/// A certificate chain with its private key, ready for rustls. Compares by file names and
/// bytes; never prints key material.
pub struct LoadedCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub certified: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names from the leaf's subjectAltName, lowercase (`*.example.com` for wildcards).
    pub names: Vec<String>,
    fingerprint: u64,
}

impl PartialEq for LoadedCert {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
    }
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert_file", &self.cert_file)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Which of the two files a problem is in, so the error names the right key and file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem {
    pub part: Part,
    pub reason: String,
}

fn problem(part: Part, reason: impl Into<String>) -> CertProblem {
    CertProblem {
        part,
        reason: reason.into(),
    }
}

/// Parses a PEM chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn parse_pair(
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<LoadedCert, CertProblem> {
    let shown = cert_file.display();
    let chain = pem_certificates(cert_pem).map_err(|r| problem(Part::Cert, r))?;
    let Some(leaf) = chain.first() else {
        return Err(problem(
            Part::Cert,
            format!("{shown} contains no PEM certificate"),
        ));
    };
    let (not_before, not_after, names) =
        leaf_facts(leaf).map_err(|r| problem(Part::Cert, format!("{shown}: {r}")))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| {
            problem(
                Part::Key,
                format!("{}: not a PEM key: {e}", key_file.display()),
            )
        })?
        .ok_or_else(|| {
            problem(
                Part::Key,
                format!(
                    "{} contains no PEM private key (PKCS#8, RSA or EC)",
                    key_file.display()
                ),
            )
        })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        problem(
            Part::Key,
            format!("{}: unsupported private key: {e}", key_file.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(problem(
            Part::Key,
            format!(
                "{} does not match the certificate in {shown}",
                key_file.display()
            ),
        ));
    }
    let mut fingerprint = Vec::with_capacity(cert_pem.len() + key_pem.len() + 8);
    fingerprint.extend_from_slice(&(cert_pem.len() as u64).to_le_bytes());
    fingerprint.extend_from_slice(cert_pem);
    fingerprint.extend_from_slice(key_pem);
    Ok(LoadedCert {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        certified: Arc::new(certified),
        not_before,
        not_after,
        names,
        fingerprint: stable_hash(&fingerprint),
    })
}

impl LoadedCert {
    /// An error when the certificate is not valid at `now` (checked on every load, since a
    /// certificate that was fine yesterday may have expired since).
    pub fn check_validity(&self, now: SystemTime) -> Result<(), String> {
        let shown = self.cert_file.display();
        if now > self.not_after {
            return Err(format!(
                "{shown} expired on {}",
                humantime::format_rfc3339_seconds(self.not_after)
            ));
        }
        if now < self.not_before {
            return Err(format!(
                "{shown} is not valid before {}",
                humantime::format_rfc3339_seconds(self.not_before)
            ));
        }
        Ok(())
    }

    pub fn covers(&self, host: &HostPattern) -> bool {
        self.names.iter().any(|name| name_covers(name, host))
    }
}

/// Whether a certificate name covers a tenant host pattern. A wildcard name covers exactly one
/// label (RFC 6125); a tenant wildcard is covered only by the same wildcard name.
pub fn name_covers(name: &str, host: &HostPattern) -> bool {
    match host {
        HostPattern::Exact(h) => {
            name == h
                || name.strip_prefix("*.").is_some_and(|suffix| {
                    h.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
                })
        }
        HostPattern::Wildcard(suffix) => name.strip_prefix("*.") == Some(suffix.as_str()),
    }
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))
}

fn leaf_facts(der: &[u8]) -> Result<(SystemTime, SystemTime, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let validity = cert.validity();
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("unreadable subjectAltName: {e}")),
    };
    Ok((
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
        names,
    ))
}

/// Trust anchors for verifying a pool's backends, in the form pingora's connector takes.
pub struct CaBundle {
    pub file: PathBuf,
    pub certs: Arc<CaType>,
    fingerprint: u64,
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.file == other.file
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("file", &self.file)
            .field("certs", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Differs between bundles of different content.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

pub fn parse_ca_bundle(file: &Path, pem: &[u8]) -> Result<CaBundle, String> {
    let shown = file.display();
    let ders = pem_certificates(pem).map_err(|r| format!("{shown}: {r}"))?;
    if ders.is_empty() {
        return Err(format!("{shown} contains no PEM certificate"));
    }
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        // Checked here because pingora's own parser panics on a certificate it cannot read.
        if x509_parser::parse_x509_certificate(der).is_err() {
            return Err(format!("{shown}: certificate #{} does not parse", i + 1));
        }
        certs.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    Ok(CaBundle {
        file: file.to_path_buf(),
        certs: Arc::from(certs.into_boxed_slice()),
        fingerprint: stable_hash(pem),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(h: &str) -> HostPattern {
        HostPattern::Exact(h.into())
    }

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_covers("a.test", &exact("a.test")));
        assert!(name_covers("*.a.test", &exact("www.a.test")));
        assert!(!name_covers("*.a.test", &exact("a.test")));
        assert!(!name_covers("*.a.test", &exact("x.www.a.test")));
        assert!(name_covers(
            "*.a.test",
            &HostPattern::Wildcard("a.test".into())
        ));
        assert!(!name_covers(
            "www.a.test",
            &HostPattern::Wildcard("a.test".into())
        ));
    }

    #[test]
    fn garbage_is_reported_by_part() {
        let cert = Path::new("c.pem");
        let key = Path::new("k.pem");
        let e = parse_pair(cert, key, b"hello", b"").unwrap_err();
        assert_eq!(e.part, Part::Cert);
        assert!(e.reason.contains("no PEM certificate"), "{}", e.reason);
        let e = parse_ca_bundle(cert, b"").unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}

//! The TLS parts of the configuration: `{ cert, key }` tables, and loading the certificate,
//! key and CA files they name, each problem reported against the key that names the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use toml::Table;

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::{
    CaBundle, HealthConfig, HostPattern, LoadedCert, Material, PoolConfig, Probe, ServerConfig,
    TenantConfig, TlsFiles, UpstreamTls,
};
use super::names::parse_host_pattern;
use crate::hash::stable_hash;
use crate::tls::{parse_ca_bundle, parse_pair, Part};

const TLS_FILES_KEYS: &[&str] = &["cert", "key"];

/// `{ cert = "…", key = "…" }`, both required; paths as written.
pub fn parse_tls_files(
    file: &Path,
    key: &str,
    t: &Table,
    errs: &mut ConfigErrors,
) -> Option<TlsFiles> {
    let f = Fields::new(file, key, t, TLS_FILES_KEYS);
    let cert_named = f.require("cert", errs);
    let key_named = f.require("key", errs);
    let cert = f.str("cert", errs);
    let key_file = f.str("key", errs);
    f.finish(errs);
    match (cert, key_file) {
        (Some(c), Some(k)) if cert_named && key_named => Some(TlsFiles {
            cert: PathBuf::from(c),
            key: PathBuf::from(k),
        }),
        _ => None,
    }
}

/// Loaded files of the last load, reused while their bytes stay the same.
#[derive(Default)]
pub struct MaterialCache {
    certs: HashMap<(PathBuf, PathBuf), (u64, Arc<LoadedCert>)>,
    cas: HashMap<PathBuf, (u64, Arc<CaBundle>)>,
}

/// What loading the key material produced, besides errors.
pub struct LoadedMaterial {
    pub material: Material,
    /// Every file read, with a hash of its bytes: for the digest and the watched sources.
    pub files: Vec<(PathBuf, u64)>,
    /// Certificates served although outside their validity (expired, not yet valid).
    pub warnings: ConfigErrors,
}

pub struct MaterialLoader<'a> {
    base: &'a Path,
    cache: &'a mut MaterialCache,
    now: SystemTime,
    files: Vec<(PathBuf, u64)>,
    used_certs: Vec<(PathBuf, PathBuf)>,
    used_cas: Vec<PathBuf>,
    warnings: ConfigErrors,
}

impl<'a> MaterialLoader<'a> {
    /// Paths are relative to `base`, the main file's directory.
    pub fn new(base: &'a Path, cache: &'a mut MaterialCache, now: SystemTime) -> Self {
        Self {
            base,
            cache,
            now,
            files: Vec::new(),
            used_certs: Vec::new(),
            used_cas: Vec::new(),
            warnings: ConfigErrors::default(),
        }
    }

    pub fn load(
        mut self,
        main_file: &Path,
        server: &ServerConfig,
        tenants: &[Arc<TenantConfig>],
        errs: &mut ConfigErrors,
    ) -> LoadedMaterial {
        let default_cert = server
            .default_certificate
            .as_ref()
            .and_then(|files| self.cert(main_file, "server.default_certificate", files, errs));
        let mut material = Material {
            default_cert,
            ..Material::default()
        };
        for t in tenants {
            let cert = t.tls.as_ref().and_then(|files| {
                let cert = self.cert(&t.file, "tls", files, errs)?;
                if !t.hosts.iter().any(|h| cert.covers(h)) {
                    errs.push(
                        &t.file,
                        "tls.cert",
                        format!(
                            "{} covers none of this tenant's hosts (it names: {})",
                            cert.cert_file.display(),
                            if cert.names.is_empty() {
                                "no DNS names".into()
                            } else {
                                cert.names.join(", ")
                            }
                        ),
                    );
                    return None;
                }
                Some(cert)
            });
            material.tenant_certs.push(cert);
            let cas = t
                .pools
                .iter()
                .map(|p| {
                    let ca_file = p.tls.as_ref()?.ca_file.as_ref()?;
                    self.ca(&t.file, &format!("pools.{}.ca_file", p.name), ca_file, errs)
                })
                .collect();
            material.pool_cas.push(cas);
        }
        let used: std::collections::HashSet<_> = self.used_certs.iter().collect();
        self.cache.certs.retain(|k, _| used.contains(k));
        let used: std::collections::HashSet<_> = self.used_cas.iter().collect();
        self.cache.cas.retain(|k, _| used.contains(k));
        LoadedMaterial {
            material,
            files: self.files,
            warnings: self.warnings,
        }
    }

    fn read(&mut self, path: &Path) -> Result<(Vec<u8>, u64), String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let hash = stable_hash(&bytes);
        self.files.push((path.to_path_buf(), hash));
        Ok((bytes, hash))
    }

    fn cert(
        &mut self,
        file: &Path,
        key: &str,
        files: &TlsFiles,
        errs: &mut ConfigErrors,
    ) -> Option<Arc<LoadedCert>> {
        let (cert_path, key_path) = (
            resolve(self.base, &files.cert),
            resolve(self.base, &files.key),
        );
        let cert_bytes = self.read(&cert_path);
        let key_bytes = self.read(&key_path);
        let ((cert_pem, ch), (key_pem, kh)) = match (cert_bytes, key_bytes) {
            (Ok(c), Ok(k)) => (c, k),
            (c, k) => {
                if let Err(reason) = c {
                    errs.push(file, format!("{key}.cert"), reason);
                }
                if let Err(reason) = k {
                    errs.push(file, format!("{key}.key"), reason);
                }
                return None;
            }
        };
        let id = (cert_path, key_path);
        let both = ch.rotate_left(1) ^ kh;
        self.used_certs.push(id.clone());
        let cert = match self.cache.certs.get(&id) {
            Some((h, cert)) if *h == both => cert.clone(),
            _ => match parse_pair(&id.0, &id.1, &cert_pem, &key_pem) {
                Ok(cert) => {
                    let cert = Arc::new(cert);
                    self.cache.certs.insert(id, (both, cert.clone()));
                    cert
                }
                Err(p) => {
                    let part = match p.part {
                        Part::Cert => "cert",
                        Part::Key => "key",
                    };
                    errs.push(file, format!("{key}.{part}"), p.reason);
                    return None;
                }
            },
        };
        // An expired certificate still beats none: refusing it would turn a lapse into an
        // outage for the tenant (or, at start-up, for everyone). It is served with a warning,
        // and porteiro_certificate_expiry_timestamp_seconds says so to the alerts.
        if let Err(reason) = cert.check_validity(self.now) {
            self.warnings.push(file, format!("{key}.cert"), reason);
        }
        Some(cert)
    }

    fn ca(
        &mut self,
        file: &Path,
        key: &str,
        ca_file: &Path,
        errs: &mut ConfigErrors,
    ) -> Option<Arc<CaBundle>> {
        let path = resolve(self.base, ca_file);
        let (pem, hash) = match self.read(&path) {
            Ok(read) => read,
            Err(reason) => {
                errs.push(file, key, reason);
                return None;
            }
        };
        self.used_cas.push(path.clone());
        if let Some((h, ca)) = self.cache.cas.get(&path) {
            if *h == hash {
                return Some(ca.clone());
            }
        }
        match parse_ca_bundle(&path, &pem) {
            Ok(ca) => {
                let ca = Arc::new(ca);
                self.cache.cas.insert(path, (hash, ca.clone()));
                Some(ca)
            }
            Err(reason) => {
                errs.push(file, key, reason);
                None
            }
        }
    }
}

/// `tls`, `sni`, `ca_file`, `insecure_skip_verify` and `http2` of a pool. The TLS details
/// without `tls = true` are errors: they would otherwise be silently ignored.
pub fn parse_upstream_tls(
    f: &Fields,
    pool: &mut PoolConfig,
    probe_host: &str,
    errs: &mut ConfigErrors,
) {
    let on = f.bool("tls", errs).unwrap_or(false);
    let sni = f.str("sni", errs);
    let ca_file = f.str("ca_file", errs);
    let insecure = f.bool("insecure_skip_verify", errs).unwrap_or(false);
    pool.http2 = f.bool("http2", errs).unwrap_or(false);
    if !on {
        for k in ["sni", "ca_file", "insecure_skip_verify", "http2"] {
            if f.get(k).is_some() {
                errs.push(f.file, f.path(k), "only applies with tls = true");
            }
        }
        return;
    }
    if let Some(name) = sni {
        if let Err(reason) = parse_host_pattern(name).and_then(|p| match p {
            HostPattern::Exact(_) => Ok(()),
            HostPattern::Wildcard(_) => Err("must be a hostname, not a wildcard".to_string()),
        }) {
            errs.push(f.file, f.path("sni"), reason);
        }
    }
    if ca_file.is_some() && insecure {
        errs.push(
            f.file,
            f.path("insecure_skip_verify"),
            "contradicts ca_file: verify against the CA, or skip verification, not both",
        );
    }
    // Without `sni`, the name comes from host_header (without its port), which must then be a
    // hostname a certificate can carry.
    let from_host_header = || {
        let header = pool.host_header.as_deref()?;
        let name = crate::routing::normalize_host(header)?.into_owned();
        match parse_host_pattern(&name) {
            Ok(HostPattern::Exact(_)) => Some(name),
            _ => None,
        }
    };
    let derived = if sni.is_none() && pool.host_header.is_some() {
        let name = from_host_header();
        if name.is_none() {
            errs.push(
                f.file,
                f.path("host_header"),
                "with tls = true and no sni, must be a hostname to send as SNI (or set sni)",
            );
        }
        name
    } else {
        None
    };
    let sni = sni
        .map(str::to_ascii_lowercase)
        .or(derived)
        .unwrap_or_else(|| probe_host.to_string());
    if let Some(HealthConfig {
        probe: Probe::Http { path, host },
        ..
    }) = &pool.health
    {
        let probe = Probe::Https {
            path: path.clone(),
            host: host.clone(),
            sni: sni.clone(),
        };
        if let Some(h) = pool.health.as_mut() {
            h.probe = probe;
        }
    }
    pool.tls = Some(UpstreamTls {
        sni,
        ca_file: ca_file.map(std::path::PathBuf::from),
        insecure_skip_verify: insecure,
    });
}

/// A `Strict-Transport-Security` value: a header value with a max-age.
pub fn check_hsts(v: &str) -> Result<(), String> {
    if http::HeaderValue::from_str(v).is_err() {
        return Err("not a valid header value".into());
    }
    let has_max_age = v.split(';').any(|d| {
        d.trim()
            .to_ascii_lowercase()
            .strip_prefix("max-age=")
            .is_some_and(|n| n.trim_matches('"').parse::<u64>().is_ok())
    });
    if has_max_age {
        Ok(())
    } else {
        Err("needs max-age=SECONDS, such as \"max-age=31536000; includeSubDomains\"".into())
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

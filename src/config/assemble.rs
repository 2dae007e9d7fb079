//! Putting tenant files together into one configuration with each tenant's faults kept to
//! itself. A tenant file that fails validation (its own keys, its certificate, an id or host
//! another file already has) is refused alone: the last good version of that file keeps
//! serving, and a file with none is not served. Every other tenant's change applies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::ConfigError;
use super::model::{
    CaBundle, Config, HostPattern, LoadedCert, Material, TenantConfig, TenantFault,
};

/// One tenant file as loaded now.
pub(super) struct Offer {
    pub path: PathBuf,
    /// The tenant and its key material when the file is valid on its own; else its errors.
    pub valid: Result<Compiled, Vec<ConfigError>>,
}

/// A tenant ready to serve: its config and the key material it names.
#[derive(Clone)]
pub(super) struct Compiled {
    pub tenant: Arc<TenantConfig>,
    pub cert: Option<Arc<LoadedCert>>,
    pub cas: Vec<Option<Arc<CaBundle>>>,
}

pub(super) struct Assembled {
    pub tenants: Vec<Arc<TenantConfig>>,
    /// `tenant_certs` and `pool_cas`, parallel to `tenants`.
    pub material: Material,
    pub faults: Vec<TenantFault>,
}

/// Who holds each id and host so far.
#[derive(Default)]
struct Claims<'a> {
    ids: HashMap<&'a str, &'a Path>,
    hosts: HashMap<&'a HostPattern, (&'a str, &'a Path)>,
}

impl<'a> Claims<'a> {
    /// Why `t` cannot join: ids and hosts another file holds. Nothing is claimed here.
    fn conflicts(&self, t: &TenantConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let own = t.file.as_path();
        if let Some(other) = self.ids.get(t.id.as_str()).filter(|f| **f != own) {
            errors.push(error(
                &t.file,
                "id",
                format!(
                    "tenant id `{}` is already used by {}",
                    t.id,
                    other.display()
                ),
            ));
        }
        for (i, pattern) in t.hosts.iter().enumerate() {
            if let Some((other, file)) = self.hosts.get(pattern).filter(|(_, f)| *f != own) {
                errors.push(error(
                    &t.file,
                    format!("hosts[{i}]"),
                    format!(
                        "`{}` is already claimed by tenant `{other}` in {}",
                        super::pattern_text(pattern),
                        file.display()
                    ),
                ));
            }
        }
        errors
    }

    fn claim(&mut self, t: &'a TenantConfig) {
        self.ids.insert(&t.id, &t.file);
        for pattern in &t.hosts {
            self.hosts.insert(pattern, (&t.id, &t.file));
        }
    }

    /// Claims for `now` what its file's serving version `before` already held and `now` still
    /// asks for: a file that sorts earlier cannot take it away.
    fn claim_held(&mut self, now: &'a TenantConfig, before: &TenantConfig) {
        if now.id == before.id {
            self.ids.insert(&now.id, &now.file);
        }
        for pattern in now.hosts.iter().filter(|p| before.hosts.contains(p)) {
            self.hosts.insert(pattern, (&now.id, &now.file));
        }
    }

    /// Gives up what `file` claimed (it serves nothing after all).
    fn release(&mut self, file: &Path) {
        self.ids.retain(|_, f| *f != file);
        self.hosts.retain(|_, (_, f)| *f != file);
    }
}

fn error(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        reason: reason.into(),
    }
}

/// `offers` in file-name order. What is serving claims first: versions kept from
/// `last_good`, and what valid files held in `last_good` and still ask for. Then valid files
/// in order: a later claim is the faulty one, as in a strict load.
pub(super) fn assemble(offers: Vec<Offer>, last_good: Option<&Config>) -> Assembled {
    let previous: HashMap<&Path, Compiled> = last_good
        .map(|c| {
            c.tenants
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let compiled = Compiled {
                        tenant: t.clone(),
                        cert: c.material.tenant_certs.get(i).cloned().flatten(),
                        cas: c.material.pool_cas.get(i).cloned().unwrap_or_default(),
                    };
                    (t.file.as_path(), compiled)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut chosen: Vec<(usize, &Compiled)> = Vec::with_capacity(offers.len());
    let mut faults: Vec<(usize, Vec<ConfigError>)> = Vec::new();
    let mut fresh: Vec<(usize, &Compiled)> = Vec::with_capacity(offers.len());
    for (n, offer) in offers.iter().enumerate() {
        match &offer.valid {
            Ok(c) => fresh.push((n, c)),
            Err(errors) => faults.push((n, errors.clone())),
        }
    }
    // Kept versions first: the last good configuration was consistent, so they never clash.
    let mut kept: Vec<(usize, &Compiled)> = faults
        .iter()
        .filter_map(|(n, _)| Some((*n, previous.get(offers[*n].path.as_path())?)))
        .collect();
    let mut claims = Claims::default();
    for &(_, c) in &kept {
        claims.claim(&c.tenant);
    }
    // What serving tenants hold and still ask for stays theirs, whatever the file order.
    for &(n, c) in &fresh {
        if let Some(before) = previous.get(offers[n].path.as_path()) {
            claims.claim_held(&c.tenant, &before.tenant);
        }
    }
    for (n, c) in fresh {
        let clashes = claims.conflicts(&c.tenant);
        if clashes.is_empty() {
            claims.claim(&c.tenant);
            chosen.push((n, c));
            continue;
        }
        faults.push((n, clashes));
        claims.release(&c.tenant.file);
        // Its own last good version may still fit.
        if let Some(before) = previous.get(offers[n].path.as_path()) {
            if claims.conflicts(&before.tenant).is_empty() {
                claims.claim(&before.tenant);
                kept.push((n, before));
            }
        }
    }
    let kept_ids: HashMap<usize, String> = kept
        .iter()
        .map(|(n, c)| (*n, c.tenant.id.clone()))
        .collect();
    chosen.extend(kept);
    chosen.sort_by_key(|(n, _)| *n);
    faults.sort_by_key(|(n, _)| *n);
    let mut material = Material::default();
    let mut tenants = Vec::with_capacity(chosen.len());
    for (_, c) in chosen {
        tenants.push(c.tenant.clone());
        material.tenant_certs.push(c.cert.clone());
        material.pool_cas.push(c.cas.clone());
    }
    Assembled {
        tenants,
        material,
        faults: faults
            .into_iter()
            .map(|(n, errors)| TenantFault {
                file: offers[n].path.clone(),
                errors,
                kept: kept_ids.get(&n).cloned(),
            })
            .collect(),
    }
}

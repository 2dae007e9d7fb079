//! Configuration: TOML files -> validated model. Every error is collected with its file, key
//! path and reason. A strict load (`check`) refuses a config with any error; the loads that
//! serve refuse only a tenant file with errors, unless the main file has some.

mod assemble;
mod backends;
mod cache;
mod clients;
pub mod cluster;

/// `scope = "cluster"` with nothing to share through would count per instance, silently.
const NO_CLUSTER: &str =
    "`cluster` needs [cluster] in the main file (without it every instance counts alone: use \"local\")";
mod duration;
mod error;
mod fields;
mod limits;
pub mod model;
mod names;
mod server;
mod tenant;
mod tls_keys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
use model::{Config, HostPattern, TenantConfig};
pub use server::log_format_of;

use crate::hash::{stable_hash, StableHasher};

/// Reads the main file and every `*.toml` in its tenants directory, then validates them.
pub fn load(main_file: &Path) -> Result<Config, ConfigErrors> {
    load_cached(main_file, &mut ParseCache::default())
}

/// Tenant files as parsed by an earlier load, keyed by path and reused while a file's bytes
/// stay the same: a reload after one edit parses one file, not every tenant's.
#[derive(Default)]
pub struct ParseCache {
    tenants: HashMap<PathBuf, (u64, Arc<ParsedFile>)>,
    material: tls_keys::MaterialCache,
}

/// One tenant file's own result: what it defines and the errors found inside it.
struct ParsedFile {
    tenant: Option<tenant::ParsedTenant>,
    errors: Vec<ConfigError>,
}

impl ParsedFile {
    fn parse(path: &Path, text: &str) -> ParsedFile {
        let mut errs = ConfigErrors::default();
        let tenant = match text.parse::<toml::Table>() {
            Ok(table) => Some(tenant::parse(path, &table, &mut errs)),
            Err(e) => {
                errs.push(path, "", syntax_error(&e));
                None
            }
        };
        ParsedFile {
            tenant,
            errors: errs.0,
        }
    }
}

impl ParseCache {
    fn get_or_parse(&mut self, path: &Path, text: &str) -> Arc<ParsedFile> {
        let hash = stable_hash(text.as_bytes());
        if let Some((h, parsed)) = self.tenants.get(path) {
            if *h == hash {
                return parsed.clone();
            }
        }
        let parsed = Arc::new(ParsedFile::parse(path, text));
        self.tenants
            .insert(path.to_path_buf(), (hash, parsed.clone()));
        parsed
    }
}

/// `load`, reusing (and refreshing) `cache` for tenant files whose bytes did not change.
pub fn load_cached(main_file: &Path, cache: &mut ParseCache) -> Result<Config, ConfigErrors> {
    load_with(main_file, cache, Isolation::Strict)
}

/// What `run` and reloads use: only the main file's errors refuse the configuration. A tenant
/// file with errors is left out (its last version in `last_good` keeps serving, if there is
/// one) and listed in `Config::faults`.
pub fn load_isolating(
    main_file: &Path,
    cache: &mut ParseCache,
    last_good: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    load_with(main_file, cache, Isolation::PerTenant(last_good))
}

/// Whether one tenant's errors refuse everything (`check`) or that tenant only.
#[derive(Clone, Copy)]
enum Isolation<'a> {
    Strict,
    PerTenant(Option<&'a Config>),
}

fn load_with(
    main_file: &Path,
    cache: &mut ParseCache,
    isolation: Isolation,
) -> Result<Config, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let main_text = match std::fs::read_to_string(main_file) {
        Ok(t) => t,
        Err(e) => {
            errs.push(main_file, "", format!("cannot read: {e}"));
            return Err(errs);
        }
    };
    let dir = tenants_dir(main_file, &main_text);
    let mut unreadable = ConfigErrors::default();
    let tenant_files = match read_tenant_files(&dir, main_file, &mut unreadable) {
        Ok(files) => files,
        Err(e) => {
            errs.push(
                main_file,
                "server.tenants_dir",
                format!("cannot read {}: {e}", dir.display()),
            );
            Vec::new()
        }
    };
    let input = Input {
        main_file,
        main_text: &main_text,
        tenant_files: &tenant_files,
        unreadable: unreadable.0,
    };
    match assemble_config(input, cache, isolation) {
        Ok(config) if errs.is_empty() => Ok(config),
        Ok(_) => Err(errs),
        Err(more) => {
            errs.0.extend(more.0);
            Err(errs)
        }
    }
}

/// Validates already-read texts (pure). `tenant_files` are (path, text), in any order.
pub fn parse(
    main_file: &Path,
    main_text: &str,
    tenant_files: &[(PathBuf, String)],
) -> Result<Config, ConfigErrors> {
    parse_texts(main_file, main_text, tenant_files, Isolation::Strict)
}

/// `parse` as `load_isolating` does it: tenant files with errors are refused alone.
pub fn parse_isolating(
    main_file: &Path,
    main_text: &str,
    tenant_files: &[(PathBuf, String)],
    last_good: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    parse_texts(
        main_file,
        main_text,
        tenant_files,
        Isolation::PerTenant(last_good),
    )
}

fn parse_texts(
    main_file: &Path,
    main_text: &str,
    tenant_files: &[(PathBuf, String)],
    isolation: Isolation,
) -> Result<Config, ConfigErrors> {
    let input = Input {
        main_file,
        main_text,
        tenant_files,
        unreadable: Vec::new(),
    };
    assemble_config(input, &mut ParseCache::default(), isolation)
}

/// The files of one load.
struct Input<'a> {
    main_file: &'a Path,
    main_text: &'a str,
    tenant_files: &'a [(PathBuf, String)],
    /// Tenant files that could not be read, one error each.
    unreadable: Vec<ConfigError>,
}

fn assemble_config(
    input: Input,
    cache: &mut ParseCache,
    isolation: Isolation,
) -> Result<Config, ConfigErrors> {
    let Input {
        main_file,
        main_text,
        tenant_files,
        unreadable,
    } = input;
    let mut errs = ConfigErrors::default();
    let mut server = match main_text.parse::<toml::Table>() {
        Ok(table) => server::parse(main_file, &table, &mut errs),
        Err(e) => {
            errs.push(main_file, "", syntax_error(&e));
            server::defaults()
        }
    };
    if server.cluster.is_none() && server.default_limits.scope == Some(model::Scope::Cluster) {
        errs.push(main_file, "limits.scope", NO_CLUSTER);
    }
    server.tenants_dir = resolve_dir(main_file, &server.tenants_dir);
    server.quota_state_file = server.quota_state_file.map(|p| resolve_dir(main_file, &p));
    server.upgrade_socket = resolve_dir(main_file, &server.upgrade_socket);

    let mut files: Vec<&(PathBuf, String)> = tenant_files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let parsed: Vec<Arc<ParsedFile>> = files
        .iter()
        .map(|(path, text)| cache.get_or_parse(path, text))
        .collect();
    // Forget files that are gone, so the cache never outgrows the directory.
    let present: std::collections::HashSet<&Path> =
        files.iter().map(|(p, _)| p.as_path()).collect();
    cache
        .tenants
        .retain(|path, _| present.contains(path.as_path()));

    // Key material for every tenant file that parsed, valid or not: every error shows at once.
    let readable: Vec<Arc<TenantConfig>> = parsed
        .iter()
        .filter_map(|f| Some(f.tenant.as_ref()?.tenant.clone()))
        .collect();
    let base = main_file.parent().unwrap_or(Path::new("."));
    let mut material_errs = ConfigErrors::default();
    let loaded = tls_keys::MaterialLoader::new(base, &mut cache.material, SystemTime::now()).load(
        main_file,
        &server,
        &readable,
        &mut material_errs,
    );
    let mut file_errs: HashMap<PathBuf, Vec<ConfigError>> = HashMap::new();
    for e in material_errs.0.into_iter().chain(unreadable) {
        if e.file == main_file {
            errs.0.push(e);
        } else {
            file_errs.entry(e.file.clone()).or_default().push(e);
        }
    }

    let mut material = loaded.material;
    let mut certs = std::mem::take(&mut material.tenant_certs).into_iter();
    let mut cas = std::mem::take(&mut material.pool_cas).into_iter();
    let mut offers = Vec::with_capacity(parsed.len() + file_errs.len());
    for (n, file) in parsed.iter().enumerate() {
        let path = files[n].0.clone();
        let valid = match &file.tenant {
            Some(t) => {
                // Parallel to `readable`.
                let compiled = assemble::Compiled {
                    tenant: t.tenant.clone(),
                    cert: certs.next().flatten(),
                    cas: cas.next().unwrap_or_default(),
                };
                let mut errors = file.errors.clone();
                errors.extend(file_errs.remove(&path).unwrap_or_default());
                if server.cluster.is_none() && t.tenant.limits.scope == Some(model::Scope::Cluster)
                {
                    errors.push(ConfigError {
                        file: path.clone(),
                        key: "limits.scope".into(),
                        reason: NO_CLUSTER.into(),
                    });
                }
                if errors.is_empty() {
                    Ok(compiled)
                } else {
                    Err(errors)
                }
            }
            None => Err(file.errors.clone()),
        };
        offers.push(assemble::Offer { path, valid });
    }
    // Files that could not be read at all.
    let mut unread: Vec<_> = file_errs.into_iter().collect();
    unread.sort_by(|a, b| a.0.cmp(&b.0));
    offers.extend(unread.into_iter().map(|(path, errors)| assemble::Offer {
        path,
        valid: Err(errors),
    }));
    offers.sort_by(|a, b| a.path.cmp(&b.path));
    let last_good = match isolation {
        Isolation::Strict => None,
        Isolation::PerTenant(last_good) => last_good,
    };
    let assembled = assemble::assemble(offers, last_good);
    let strict = matches!(isolation, Isolation::Strict);
    if !errs.is_empty() || (strict && !assembled.faults.is_empty()) {
        errs.0
            .extend(assembled.faults.into_iter().flat_map(|f| f.errors));
        return Err(errs);
    }
    material.tenant_certs = assembled.material.tenant_certs;
    material.pool_cas = assembled.material.pool_cas;
    let mut sources = vec![main_file.to_path_buf()];
    sources.extend(files.iter().map(|(p, _)| p.clone()));
    sources.extend(loaded.files.iter().map(|(p, _)| p.clone()));
    Ok(Config {
        server,
        tenants: assembled.tenants,
        sources,
        digest: digest(main_file, main_text, &files, &loaded.files),
        material,
        faults: assembled.faults,
        warnings: loaded.warnings.0,
        resolved: Default::default(),
    })
}

fn pattern_text(p: &HostPattern) -> String {
    match p {
        HostPattern::Exact(h) => h.clone(),
        HostPattern::Wildcard(s) => format!("*.{s}"),
    }
}

fn syntax_error(e: &toml::de::Error) -> String {
    format!(
        "invalid TOML: {}",
        e.to_string().trim_end().replace('\n', " | ")
    )
}

/// The tenants directory named by the main file, before full validation (which reports any
/// problem with it); falls back to the default when the file does not parse.
fn tenants_dir(main_file: &Path, main_text: &str) -> PathBuf {
    let written = main_text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| {
            Some(PathBuf::from(
                t.get("server")?.get("tenants_dir")?.as_str()?,
            ))
        })
        .unwrap_or_else(|| server::defaults().tenants_dir);
    resolve_dir(main_file, &written)
}

fn resolve_dir(main_file: &Path, dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        main_file.parent().unwrap_or(Path::new(".")).join(dir)
    }
}

/// Regular `*.toml` files, not hidden (editors' temp files start with `.` or end in `~`).
/// A file that cannot be read (permissions, not UTF-8) is an error of its own, naming it; an
/// unreadable directory is the `Err`. The main file is skipped should it sit in the directory.
fn read_tenant_files(
    dir: &Path,
    main_file: &Path,
    errs: &mut ConfigErrors,
) -> std::io::Result<Vec<(PathBuf, String)>> {
    let main_name = main_file.file_name();
    let main_real = std::fs::canonicalize(main_file).ok();
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // file_type() comes from the directory listing itself; a symlink is followed (stat).
        let file_type = entry.file_type()?;
        let is_file = file_type.is_file() || (file_type.is_symlink() && path.is_file());
        if name.starts_with('.') || !name.ends_with(".toml") || !is_file {
            continue;
        }
        // Only a file named like the main file can be it: spare every other file a syscall.
        if path.file_name() == main_name
            && main_real.is_some()
            && std::fs::canonicalize(&path).ok() == main_real
        {
            continue;
        }
        paths.push(path);
    }
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for (path, read) in read_all(paths) {
        match read {
            Ok(text) => out.push((path, text)),
            Err(e) => errs.push(&path, "", format!("cannot read: {e}")),
        }
    }
    Ok(out)
}

/// Reads files on every core: with 100,000 tenants, reading is half of a reload, and almost
/// all of it is waiting on open() and read() one file at a time. Order is kept.
fn read_all(paths: Vec<PathBuf>) -> Vec<(PathBuf, std::io::Result<String>)> {
    const SMALL: usize = 256;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers < 2 || paths.len() < SMALL {
        return paths
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p);
                (p, text)
            })
            .collect();
    }
    let chunk = paths.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|p| (p.clone(), std::fs::read_to_string(p)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                // A reader thread only panics if the allocator does; nothing to salvage.
                h.join().unwrap_or_default()
            })
            .collect()
    })
}

/// Every piece is length-prefixed, so bytes moving between a name and a text, or between two
/// files, change the digest: a reload skips a config whose digest it already runs.
fn digest(
    main_file: &Path,
    main_text: &str,
    files: &[&(PathBuf, String)],
    key_files: &[(PathBuf, u64)],
) -> String {
    let mut h = StableHasher::default();
    let mut piece = |bytes: &[u8]| {
        h.write(&(bytes.len() as u64).to_le_bytes()).write(bytes);
    };
    piece(main_file.as_os_str().as_encoded_bytes());
    piece(main_text.as_bytes());
    for (path, text) in files {
        piece(path.as_os_str().as_encoded_bytes());
        piece(text.as_bytes());
    }
    // Certificates, keys and CAs by the hash of their bytes: rotating one is a change.
    for (path, hash) in key_files {
        piece(path.as_os_str().as_encoded_bytes());
        piece(&hash.to_le_bytes());
    }
    format!("{:016x}", h.finish())
}

/// Whether a tenant file serving in `before` is missing from `now`.
pub fn lost_tenant_file(before: &Config, now: &Config) -> bool {
    // A file kept from its last good version (unreadable now) or refused is still there.
    let present: std::collections::HashSet<&Path> = now
        .sources
        .iter()
        .map(PathBuf::as_path)
        .chain(now.tenants.iter().map(|t| t.file.as_path()))
        .chain(now.faults.iter().map(|f| f.file.as_path()))
        .collect();
    before
        .tenants
        .iter()
        .any(|t| !present.contains(t.file.as_path()))
}

#[cfg(test)]
mod assemble_tests;
#[cfg(test)]
mod load_tests;
#[cfg(test)]
mod tenant_tests;
#[cfg(test)]
mod tests;

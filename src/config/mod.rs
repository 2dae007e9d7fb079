//! Configuration: TOML files -> validated model. Every error is collected with its file, key
//! path and reason; a config with any error is refused whole.

mod duration;
mod error;
mod fields;
pub mod model;
mod names;
mod server;
mod tenant;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
use model::{Config, HostPattern};

use crate::hash::StableHasher;

/// Reads the main file and every `*.toml` in its tenants directory, then validates them.
pub fn load(main_file: &Path) -> Result<Config, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let main_text = match std::fs::read_to_string(main_file) {
        Ok(t) => t,
        Err(e) => {
            errs.push(main_file, "", format!("cannot read: {e}"));
            return Err(errs);
        }
    };
    let dir = tenants_dir(main_file, &main_text);
    let tenant_files = match read_tenant_files(&dir) {
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
    match parse(main_file, &main_text, &tenant_files) {
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
    let mut errs = ConfigErrors::default();
    let mut server = match main_text.parse::<toml::Table>() {
        Ok(table) => server::parse(main_file, &table, &mut errs),
        Err(e) => {
            errs.push(main_file, "", syntax_error(&e));
            server::defaults()
        }
    };
    server.tenants_dir = resolve_dir(main_file, &server.tenants_dir);

    let mut files: Vec<&(PathBuf, String)> = tenant_files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tenants = Vec::with_capacity(files.len());
    let mut ids: HashMap<String, PathBuf> = HashMap::new();
    let mut claimed: HashMap<HostPattern, (String, PathBuf)> = HashMap::new();
    for (path, text) in &files {
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                errs.push(path, "", syntax_error(&e));
                continue;
            }
        };
        let parsed = tenant::parse(path, &table, &mut errs);
        let owner = parsed.id.clone().unwrap_or_else(|| "(no id)".into());
        if let Some(id) = &parsed.id {
            if let Some(first) = ids.get(id) {
                errs.push(
                    path,
                    "id",
                    format!("tenant id `{id}` is already used by {}", first.display()),
                );
            } else {
                ids.insert(id.clone(), path.clone());
            }
        }
        for (i, pattern) in &parsed.hosts {
            match claimed.get(pattern) {
                Some((other, file)) => errs.push(
                    path,
                    format!("hosts[{i}]"),
                    format!(
                        "`{}` is already claimed by tenant `{other}` in {}",
                        pattern_text(pattern),
                        file.display()
                    ),
                ),
                None => {
                    claimed.insert(pattern.clone(), (owner.clone(), path.clone()));
                }
            }
        }
        tenants.push(parsed.tenant);
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut sources = vec![main_file.to_path_buf()];
    sources.extend(files.iter().map(|(p, _)| p.clone()));
    Ok(Config {
        server,
        tenants,
        sources,
        digest: digest(main_file, main_text, &files),
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
fn read_tenant_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".toml") || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        out.push((path, text));
    }
    out.sort();
    Ok(out)
}

fn digest(main_file: &Path, main_text: &str, files: &[&(PathBuf, String)]) -> String {
    let mut h = StableHasher::default();
    h.write(main_file.as_os_str().as_encoded_bytes())
        .write(main_text.as_bytes());
    for (path, text) in files {
        h.write(path.as_os_str().as_encoded_bytes())
            .write(text.as_bytes());
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests;

//! Per-tenant isolation of configuration faults.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::Config;
use super::*;

fn load(files: &[(&str, &str)], last_good: Option<&Config>) -> Result<Config, ConfigErrors> {
    load_main("", files, last_good)
}

fn load_main(
    main: &str,
    files: &[(&str, &str)],
    last_good: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(format!("/c/tenants.d/{n}")), t.to_string()))
        .collect();
    parse_isolating(Path::new("/c/porteiro.toml"), main, &files, last_good)
}

fn tenant(id: &str, host: &str, backend_port: u16) -> String {
    format!("id = \"{id}\"\nhosts = [\"{host}\"]\n[pools.p]\nbackends = [\"127.0.0.1:{backend_port}\"]\n")
}

fn ids(c: &Config) -> Vec<&str> {
    c.tenants.iter().map(|t| t.id.as_str()).collect()
}

#[test]
fn a_broken_edit_keeps_the_last_good_version_and_the_others_apply() {
    let v1 = load(
        &[
            ("a.toml", &tenant("a", "a.test", 1)),
            ("b.toml", &tenant("b", "b.test", 1)),
        ],
        None,
    )
    .unwrap();
    let v2 = load(
        &[
            (
                "a.toml",
                "id = \"a\"\nhosts = [\"a.test\"]\n[pools.p]\nbackends = [\"nope\"]\n",
            ),
            ("b.toml", &tenant("b", "b.test", 2)),
        ],
        Some(&v1),
    )
    .unwrap();
    assert_eq!(ids(&v2), ["a", "b"]);
    assert!(
        Arc::ptr_eq(&v2.tenants[0], &v1.tenants[0]),
        "a serves its last good version"
    );
    assert_eq!(
        v2.tenants[1].pools[0].backends[0].addr.port(),
        2,
        "b's edit applies"
    );
    assert_eq!(v2.faults.len(), 1);
    assert_eq!(v2.faults[0].file, Path::new("/c/tenants.d/a.toml"));
    assert_eq!(v2.faults[0].kept.as_deref(), Some("a"));
    assert_eq!(v2.faults[0].errors[0].key, "pools.p.backends[0]");
    // Fixed later: the new version replaces the kept one.
    let v3 = load(
        &[
            ("a.toml", &tenant("a", "a.test", 3)),
            ("b.toml", &tenant("b", "b.test", 2)),
        ],
        Some(&v2),
    )
    .unwrap();
    assert!(v3.faults.is_empty());
    assert_eq!(v3.tenants[0].pools[0].backends[0].addr.port(), 3);
}

#[test]
fn a_new_broken_file_is_not_served_and_a_strict_load_refuses_everything() {
    let files = [
        ("a.toml", tenant("a", "a.test", 1)),
        ("n.toml", "id = \"n\"\n".to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let c = load(&files, None).unwrap();
    assert_eq!(ids(&c), ["a"]);
    assert_eq!(c.faults.len(), 1);
    assert_eq!(c.faults[0].kept, None);
    assert!(
        c.sources.iter().any(|p| p.ends_with("n.toml")),
        "still watched"
    );
    let strict = super::tests::tenants(&files).unwrap_err();
    let keys = |errs: &[ConfigError]| -> Vec<(PathBuf, String)> {
        errs.iter()
            .map(|e| (e.file.clone(), e.key.clone()))
            .collect()
    };
    assert_eq!(keys(&strict.0), keys(&c.faults[0].errors));
}

#[test]
fn a_file_claiming_a_kept_tenants_host_is_the_faulty_one() {
    let v1 = load(&[("b.toml", &tenant("b", "shop.test", 1))], None).unwrap();
    // b breaks (kept as it was), and a new file a.toml, earlier in order, claims b's host.
    let v2 = load(
        &[
            ("a.toml", &tenant("a", "shop.test", 2)),
            ("b.toml", "id = \"b\"\n"),
        ],
        Some(&v1),
    )
    .unwrap();
    assert_eq!(ids(&v2), ["b"]);
    let files: Vec<_> = v2
        .faults
        .iter()
        .map(|f| f.file.file_name().unwrap())
        .collect();
    assert_eq!(files, ["a.toml", "b.toml"]);
    assert_eq!(v2.faults[0].errors[0].key, "hosts[0]");
    assert!(
        v2.faults[0].errors[0].reason.contains("tenant `b`"),
        "{:?}",
        v2.faults[0]
    );
}

#[test]
fn a_valid_file_that_now_clashes_falls_back_to_its_own_last_good_version() {
    let v1 = load(
        &[
            ("a.toml", &tenant("a", "a.test", 1)),
            ("b.toml", &tenant("b", "b.test", 1)),
        ],
        None,
    )
    .unwrap();
    // b now claims a's host: refused, and its previous version (b.test) keeps serving.
    let v2 = load(
        &[
            ("a.toml", &tenant("a", "a.test", 1)),
            ("b.toml", &tenant("b", "a.test", 2)),
        ],
        Some(&v1),
    )
    .unwrap();
    assert_eq!(ids(&v2), ["a", "b"]);
    assert_eq!(v2.tenants[1].pools[0].backends[0].addr.port(), 1);
    assert_eq!(v2.faults[0].kept.as_deref(), Some("b"));
}

#[test]
fn main_file_errors_still_refuse_the_whole_configuration() {
    let errs = load_main(
        "[server]\nthreads = 0\n",
        &[("n.toml", "id = \"n\"\n")],
        None,
    )
    .unwrap_err();
    let files: Vec<_> = errs.0.iter().map(|e| e.file.file_name().unwrap()).collect();
    assert_eq!(files[0], "porteiro.toml");
    assert!(
        files.contains(&std::ffi::OsStr::new("n.toml")),
        "every error is listed"
    );
}

#[test]
fn a_serving_tenant_keeps_its_host_against_a_file_that_sorts_earlier() {
    let v1 = load(&[("b.toml", &tenant("b", "shop.test", 1))], None).unwrap();
    // a.toml, new and earlier in order, claims b's host; b is valid and unchanged.
    let v2 = load(
        &[
            ("a.toml", &tenant("a", "shop.test", 2)),
            ("b.toml", &tenant("b", "shop.test", 1)),
        ],
        Some(&v1),
    )
    .unwrap();
    assert_eq!(ids(&v2), ["b"]);
    assert_eq!(v2.faults.len(), 1);
    assert_eq!(v2.faults[0].file, Path::new("/c/tenants.d/a.toml"));
    // An id taken over the same way.
    let v3 = load(
        &[
            ("a.toml", &tenant("b", "other.test", 2)),
            ("b.toml", &tenant("b", "shop.test", 1)),
        ],
        Some(&v1),
    )
    .unwrap();
    assert_eq!(v3.tenants.len(), 1);
    assert_eq!(v3.tenants[0].file, Path::new("/c/tenants.d/b.toml"));
    assert_eq!(v3.faults.len(), 1);
    assert_eq!(v3.faults[0].file, Path::new("/c/tenants.d/a.toml"));
    assert_eq!(v3.faults[0].errors[0].key, "id");
}

#[test]
fn a_tenant_file_is_lost_only_when_nothing_of_it_is_left() {
    let v1 = load(
        &[
            ("a.toml", &tenant("a", "a.test", 1)),
            ("b.toml", &tenant("b", "b.test", 1)),
        ],
        None,
    )
    .unwrap();
    let gone = load(&[("a.toml", &tenant("a", "a.test", 1))], Some(&v1)).unwrap();
    assert!(lost_tenant_file(&v1, &gone));
    let broken = load(
        &[("a.toml", &tenant("a", "a.test", 1)), ("b.toml", "id = ")],
        Some(&v1),
    )
    .unwrap();
    assert!(!lost_tenant_file(&v1, &broken), "refused, not lost");
    // A file that could not be read is not among the sources, but its last good version serves.
    let mut unreadable = broken.clone();
    unreadable.sources.retain(|p| !p.ends_with("b.toml"));
    assert!(!lost_tenant_file(&v1, &unreadable));
}

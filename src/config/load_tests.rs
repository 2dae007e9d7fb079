//! `load` against real directories, the main file's own errors, the digest and the cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

const TENANT_A: &str =
    "id = \"a\"\nhosts = [\"a.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
const TENANT_B: &str =
    "id = \"b\"\nhosts = [\"b.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:2\"]\n";

/// A temp dir with `porteiro.toml` (the given text) and a `t/` tenants directory.
fn setup(main_text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("porteiro.toml");
    std::fs::write(&main, main_text).unwrap();
    std::fs::create_dir(dir.path().join("t")).unwrap();
    (dir, main)
}

#[test]
fn load_reads_the_tenants_dir_and_skips_editor_files() {
    let (dir, main) = setup("[server]\ntenants_dir = \"t\"\n");
    let t = dir.path().join("t");
    std::fs::write(t.join("b.toml"), TENANT_B).unwrap();
    std::fs::write(t.join("a.toml"), TENANT_A).unwrap();
    for ignored in [
        ".a.toml.swp",
        "a.toml~",
        ".hidden.toml",
        "notes.txt",
        "a.toml.bak",
    ] {
        std::fs::write(t.join(ignored), "garbage").unwrap();
    }
    // Not recursive, and a directory is not a file even when named like one.
    std::fs::create_dir_all(t.join("sub.toml/deeper")).unwrap();
    std::fs::write(t.join("sub.toml/c.toml"), "garbage").unwrap();
    let c = load(&main).unwrap();
    let ids: Vec<&str> = c.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "b"]);
    assert_eq!(c.server.tenants_dir, t);
    assert_eq!(
        c.sources,
        vec![main.clone(), t.join("a.toml"), t.join("b.toml")]
    );
    assert_eq!(c.tenants[0].file, t.join("a.toml"));
    let text = |p: &Path| std::fs::read_to_string(p).unwrap();
    let parsed = parse(
        &main,
        &text(&main),
        &[
            (t.join("b.toml"), TENANT_B.into()),
            (t.join("a.toml"), TENANT_A.into()),
        ],
    )
    .unwrap();
    assert_eq!(parsed, c);
}

#[test]
fn the_default_and_an_absolute_tenants_dir() {
    let (dir, main) = setup("");
    std::fs::create_dir(dir.path().join("tenants.d")).unwrap();
    std::fs::write(dir.path().join("tenants.d/a.toml"), TENANT_A).unwrap();
    assert_eq!(load(&main).unwrap().tenants.len(), 1);

    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("b.toml"), TENANT_B).unwrap();
    let abs = elsewhere.path().display().to_string();
    std::fs::write(&main, format!("[server]\ntenants_dir = {abs:?}\n")).unwrap();
    let c = load(&main).unwrap();
    assert_eq!(c.server.tenants_dir, elsewhere.path());
    assert_eq!(c.tenants[0].id, "b");
}

#[test]
fn the_main_file_is_not_read_as_a_tenant() {
    let (dir, main) = setup("[server]\ntenants_dir = \".\"\n");
    std::fs::write(dir.path().join("a.toml"), TENANT_A).unwrap();
    let c = load(&main).unwrap();
    assert_eq!(c.sources, vec![main, dir.path().join("./a.toml")]);
}

#[test]
fn a_missing_main_file_or_tenants_dir() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("nope.toml");
    let errs = load(&main).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        (errs.0[0].file.as_path(), errs.0[0].key.as_str()),
        (main.as_path(), "")
    );
    assert!(errs.0[0].reason.starts_with("cannot read: "), "{errs}");

    // The other errors of the main file are still reported alongside.
    let (_dir, main) = setup("[server]\ntenants_dir = \"missing\"\nthreads = 0\n");
    let errs = load(&main).unwrap_err();
    let got: Vec<(&Path, &str)> = errs
        .0
        .iter()
        .map(|e| (e.file.as_path(), e.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (main.as_path(), "server.tenants_dir"),
            (main.as_path(), "server.threads")
        ]
    );
    assert!(errs.0[0].reason.contains("missing"), "{errs}");
}

#[test]
fn an_unreadable_tenant_file_is_its_own_error() {
    let (dir, main) = setup("[server]\ntenants_dir = \"t\"\n");
    let t = dir.path().join("t");
    std::fs::write(t.join("a.toml"), TENANT_A).unwrap();
    std::fs::write(t.join("bin.toml"), [0xff, 0xfe, 0x00]).unwrap();
    std::fs::write(t.join("c.toml"), "id = \"c\"\nhosts = [\"a.test\"]\n").unwrap();
    let errs = load(&main).unwrap_err();
    let got: Vec<(PathBuf, &str)> = errs
        .0
        .iter()
        .map(|e| (e.file.clone(), e.key.as_str()))
        .collect();
    // The unreadable file is named, and the others are still checked.
    assert_eq!(got, vec![(t.join("bin.toml"), ""), (t.join("c.toml"), "")]);
    assert!(errs.0[0].reason.starts_with("cannot read: "), "{errs}");
}

#[test]
fn main_file_errors_name_the_main_file() {
    let main = Path::new("/c/porteiro.toml");
    let tenant = (
        PathBuf::from("/c/tenants.d/a.toml"),
        "id = \"a\"\n".to_string(),
    );
    let errs = parse(
        main,
        "[server]\nlisten = []\n[tls]\n",
        std::slice::from_ref(&tenant),
    )
    .unwrap_err();
    let got: Vec<(&Path, &str)> = errs
        .0
        .iter()
        .map(|e| (e.file.as_path(), e.key.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (main, "tls"),
            (main, "server.listen"),
            (tenant.0.as_path(), "hosts"),
            (tenant.0.as_path(), ""),
        ]
    );

    let errs = parse(main, "[server\nlisten = 1\n", &[]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        (errs.0[0].file.as_path(), errs.0[0].key.as_str()),
        (main, "")
    );
    // toml's message carries the line and column; it is kept on one line.
    assert!(errs.0[0].reason.starts_with("invalid TOML: "), "{errs}");
    assert!(errs.0[0].reason.contains("line 1"), "{errs}");
    assert!(!errs.to_string().contains('\n'), "{errs}");
}

#[test]
fn the_digest_follows_every_byte_and_ignores_order() {
    let main = Path::new("/c/porteiro.toml");
    let a = (PathBuf::from("/c/t/a.toml"), TENANT_A.to_string());
    let b = (PathBuf::from("/c/t/b.toml"), TENANT_B.to_string());
    let digest = |main_text: &str, files: &[(PathBuf, String)]| {
        parse(main, main_text, files).unwrap().digest
    };
    let base = digest("", &[a.clone(), b.clone()]);
    assert_eq!(base.len(), 16);
    assert!(base.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(base, digest("", &[b.clone(), a.clone()]));
    assert_ne!(base, digest("\n", &[a.clone(), b.clone()]));
    let edited = (b.0.clone(), TENANT_B.replace(":2", ":3"));
    assert_ne!(base, digest("", &[a.clone(), edited]));
    let renamed = (PathBuf::from("/c/t/c.toml"), b.1.clone());
    assert_ne!(base, digest("", &[a.clone(), renamed]));
    // The same bytes split differently between a name and a text are a different config.
    let h = |name: &str, text: &str| {
        let file = (PathBuf::from(name), text.to_string());
        super::digest(Path::new("m"), "", &[&file], &[])
    };
    assert_ne!(h("/x.toml", "ab"), h("/x.tomla", "b"));
}

#[test]
fn the_cache_reuses_unchanged_tenants() {
    let (dir, main) = setup("[server]\ntenants_dir = \"t\"\n");
    let t = dir.path().join("t");
    std::fs::write(t.join("a.toml"), TENANT_A).unwrap();
    std::fs::write(t.join("b.toml"), TENANT_B).unwrap();
    let mut cache = ParseCache::default();
    let first = load_cached(&main, &mut cache).unwrap();
    let again = load_cached(&main, &mut cache).unwrap();
    assert!(Arc::ptr_eq(&first.tenants[0], &again.tenants[0]));
    assert!(Arc::ptr_eq(&first.tenants[1], &again.tenants[1]));
    assert_eq!(first.digest, again.digest);

    std::fs::write(t.join("b.toml"), TENANT_B.replace(":2", ":3")).unwrap();
    let edited = load_cached(&main, &mut cache).unwrap();
    assert!(Arc::ptr_eq(&first.tenants[0], &edited.tenants[0]));
    assert!(!Arc::ptr_eq(&first.tenants[1], &edited.tenants[1]));
    assert_eq!(edited.tenants[1].pools[0].backends[0].addr.port(), 3);
    assert_ne!(first.digest, edited.digest);

    // A broken edit is reported every time, from the cache too, and a removed file is forgotten.
    std::fs::write(t.join("b.toml"), "id = ").unwrap();
    for _ in 0..2 {
        let errs = load_cached(&main, &mut cache).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs.0[0].file, t.join("b.toml"));
    }
    std::fs::remove_file(t.join("b.toml")).unwrap();
    assert_eq!(load_cached(&main, &mut cache).unwrap().tenants.len(), 1);
    assert_eq!(cache.tenants.len(), 1);
}

//! `porteiro check` and `porteiro run` start-up errors, as an operator sees them.
mod support;

use std::process::Command;

use support::*;

#[test]
fn check_prints_a_summary_for_a_valid_config() {
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "acme.toml",
        &one_pool_tenant(
            "acme",
            &["acme.example.com", "*.acme.example.com"],
            &[dead_addr(), dead_addr()],
            "",
        ),
    )
    .tenant(
        "globex.toml",
        &one_pool_tenant("globex", &["globex.example.com"], &[dead_addr()], ""),
    );
    let (code, out, err) = check(&cfg.main_file());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 tenants, 3 hosts, 2 pools, 3 backends"),
        "{out}"
    );
}

#[test]
fn check_ships_a_valid_example_config() {
    let main = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/porteiro.toml");
    let (code, out, err) = check(&main);
    assert_eq!(code, 0, "conf/porteiro.toml must pass check:\n{err}");
    assert!(out.contains("is valid"), "{out}");
}

/// Tenant files of one case: (file name, contents).
type Files<'a> = Vec<(&'a str, String)>;
/// (file, key, reason fragment) that one error line must name.
type Expected<'a> = Vec<(&'a str, &'a str, &'a str)>;

/// Each case: tenant files, and the (file, key, reason fragment) every error line must name.
#[test]
fn check_reports_every_validation_error_with_file_and_key() {
    let ok =
        |id: &str, host: &str| one_pool_tenant(id, &[host], &["127.0.0.1:9".parse().unwrap()], "");
    let cases: Vec<(Files, Expected)> = vec![
        (
            vec![("a.toml", ok("a", "same.example.com")), ("b.toml", ok("b", "same.example.com"))],
            vec![("b.toml", "hosts[0]", "a.toml")],
        ),
        (
            vec![("a.toml", ok("a", "*.wild.example.com")), ("b.toml", ok("b", "*.wild.example.com"))],
            vec![("b.toml", "hosts[0]", "a.toml")],
        ),
        (
            vec![("a.toml", ok("dup", "one.example.com")), ("b.toml", ok("dup", "two.example.com"))],
            vec![("b.toml", "id", "a.toml")],
        ),
        (
            vec![("a.toml", "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = [\"127.0.0.1:9\"]\n[[routes]]\npath_prefix = \"/\"\npool = \"nope\"\n".into())],
            vec![("a.toml", "routes[0].pool", "nope")],
        ),
        (
            vec![("a.toml", "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = []\n".into())],
            vec![("a.toml", "pools.web.backends", "")],
        ),
        (
            vec![("a.toml", "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = [\"not-an-address\"]\n".into())],
            vec![("a.toml", "pools.web.backends[0]", "")],
        ),
        (
            vec![("a.toml", "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = [\"127.0.0.1:9\"]\nconnect_timeout = \"soon\"\n".into())],
            vec![("a.toml", "pools.web.connect_timeout", "")],
        ),
        (
            vec![("a.toml", ok("a", "a.*.example.com"))],
            vec![("a.toml", "hosts[0]", "")],
        ),
        (
            vec![("a.toml", "id = \"a\"\nhosts = [\"a.test\"]\n[pools.web]\nbackends = [\"127.0.0.1:9\"]\nblance = \"random\"\n".into())],
            vec![("a.toml", "pools.web.blance", "unknown")],
        ),
        (
            // Several errors in one file are all reported.
            vec![("a.toml", "id = \"a\"\nhostz = [\"a.test\"]\n[pools.web]\nbackends = [\"127.0.0.1:9\", \"x\"]\nread_timeout = \"5\"\n".into())],
            vec![("a.toml", "hostz", "unknown"), ("a.toml", "hosts", ""), ("a.toml", "pools.web.backends[1]", ""), ("a.toml", "pools.web.read_timeout", "")],
        ),
    ];
    for (files, expected) in cases {
        let cfg = ConfigDir::new("");
        for (name, body) in &files {
            cfg.tenant(name, body);
        }
        let (code, out, err) = check(&cfg.main_file());
        assert_eq!(code, 1, "expected failure for {files:?}\nstdout: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(
            lines.len(),
            expected.len(),
            "one line per error for {files:?}:\n{err}"
        );
        for (file, key, reason) in expected {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(&format!("{file}: {key}: ")) && l.contains(reason)),
                "no error naming {file} / {key} / {reason:?} in:\n{err}"
            );
        }
    }
}

#[test]
fn check_rejects_unknown_server_keys() {
    let cfg = ConfigDir::new("treads = 4");
    cfg.tenant(
        "a.toml",
        &one_pool_tenant("a", &["a.test"], &[dead_addr()], ""),
    );
    let (code, _, err) = check(&cfg.main_file());
    assert_eq!(code, 1);
    assert!(err.contains("porteiro.toml: server.treads: "), "{err}");
}

#[test]
fn run_with_a_missing_config_fails_in_one_line() {
    let out = Command::new(BIN)
        .args(["run", "-c", "/nonexistent/porteiro.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/porteiro.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_on_a_busy_port_fails_in_one_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = ConfigDir::new("");
    std::fs::write(
        cfg.main_file(),
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    cfg.tenant(
        "a.toml",
        &one_pool_tenant("a", &["a.test"], &[dead_addr()], ""),
    );
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(cfg.main_file())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

/// The shipped systemd unit, key by key (systemd-analyze is not available everywhere the
/// tests run): what porteiro's behaviour depends on must be there.
#[test]
fn the_systemd_unit_has_the_keys_porteiro_relies_on() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/porteiro.service"
    ))
    .unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .collect()
    };
    let one = |key: &str| {
        let v = values(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0].clone()
    };
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.lines().any(|l| l == section), "{section} missing");
    }
    // READY=1 at start, MAINPID from the new process after an upgrade (tests/upgrade.rs).
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "all");
    // --main-only: one tenant's broken file must not keep the service (every tenant) down.
    assert!(
        one("ExecStartPre").ends_with("porteiro check --main-only -c /etc/porteiro/porteiro.toml")
    );
    assert!(one("ExecStart").ends_with("porteiro run -c /etc/porteiro/porteiro.toml"));
    // reload = check, then SIGHUP
    let reload = values("ExecReload");
    assert_eq!(reload.len(), 2, "{reload:?}");
    assert!(reload[0].contains("porteiro check --main-only"));
    assert!(reload[1].contains("kill -HUP $MAINPID"));
    assert_eq!(one("KillSignal"), "SIGTERM");
    // Above the default grace_period (30 s) plus graceful_shutdown_timeout (10 s).
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    assert!(stop > 40, "{stop}");
    // The default upgrade_socket (/run/porteiro/upgrade.sock) needs /run/porteiro.
    assert_eq!(one("RuntimeDirectory"), "porteiro");
    assert_eq!(one("WantedBy"), "multi-user.target");
    // Every line is a comment, a section, empty, or KEY=VALUE.
    for l in unit.lines() {
        let ok = l.is_empty()
            || l.starts_with('#')
            || (l.starts_with('[') && l.ends_with(']'))
            || l.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())
            });
        assert!(ok, "not a unit line: {l}");
    }
}

#[test]
fn check_main_only_fails_for_the_main_file_alone() {
    let cfg = ConfigDir::new("");
    cfg.tenant(
        "good.toml",
        &one_pool_tenant("good", &["good.test"], &[dead_addr()], ""),
    )
    .tenant("broken.toml", "id = \"broken\"\n");
    let (code, _, err) = check(&cfg.main_file());
    assert_eq!(code, 1, "{err}");
    let main_only = |cfg: &ConfigDir| {
        std::process::Command::new(BIN)
            .args(["check", "--main-only", "-c"])
            .arg(cfg.main_file())
            .output()
            .unwrap()
    };
    let out = main_only(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("broken.toml"), "still listed: {err}");
    cfg.write_main("threads = 0");
    assert_eq!(main_only(&cfg).status.code(), Some(1));
}

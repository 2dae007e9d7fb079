//! Validation of whole configurations: tenant files and the checks across them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::*;
use super::*;

pub(super) fn tenants(files: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(format!("/c/tenants.d/{n}")), t.to_string()))
        .collect();
    parse(Path::new("/c/porteiro.toml"), "", &files)
}

/// (file name, key) of every error, for exact assertions.
pub(super) fn keys(r: Result<Config, ConfigErrors>) -> Vec<(String, String)> {
    r.expect_err("expected errors")
        .0
        .into_iter()
        .map(|e| {
            (
                e.file.file_name().unwrap().to_string_lossy().into_owned(),
                e.key,
            )
        })
        .collect()
}

pub(super) fn k(file: &str, key: &str) -> (String, String) {
    (file.to_string(), key.to_string())
}

/// One pool named `p` and what else the test needs, for short focused tests.
pub(super) fn one_pool(pool_extra: &str, rest: &str) -> String {
    format!(
        "id = \"a\"\nhosts = [\"a.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n{pool_extra}\n{rest}"
    )
}

const FULL: &str = r#"
id = "acme"
hosts = ["acme.example.com", "*.acme.example.com"]

[pools.web]
backends = ["10.0.0.1:8080", { addr = "10.0.0.2:8080", weight = 3 }]
balance = "least_conn"
connect_timeout = "500ms"
retries = 1
health = { path = "/healthz", interval = "2s", timeout = "1s", healthy_after = 1, unhealthy_after = 4 }
passive = { failures = 5, cooldown = "30s" }

[pools.api]
backends = ["[::1]:9000"]
balance = "consistent_hash"
hash_key = "header:X-User"
host_header = "api.internal"

[[routes]]
path_prefix = "/api/"
pool = "api"

[[routes]]
path_prefix = "/status"
respond = { status = 503, body = "down\n", headers = { "Content-Type" = "text/plain" } }

[[routes]]
path_prefix = "/"
pool = "web"
"#;

#[test]
fn a_full_tenant_parses_into_the_model() {
    let c = tenants(&[("acme.toml", FULL)]).unwrap();
    let t = &c.tenants[0];
    assert_eq!(t.id, "acme");
    assert_eq!(
        t.hosts,
        vec![
            HostPattern::Exact("acme.example.com".into()),
            HostPattern::Wildcard("acme.example.com".into())
        ]
    );
    // Pools come in name order.
    let api = &t.pools[0];
    let web = &t.pools[1];
    assert_eq!((api.name.as_str(), web.name.as_str()), ("api", "web"));
    assert_eq!(web.backends[1].weight, 3);
    assert_eq!(web.balance, Balance::LeastConn);
    assert_eq!(web.connect_timeout, Duration::from_millis(500));
    assert_eq!(web.read_timeout, Duration::from_secs(30));
    assert_eq!(web.retries, 1);
    assert_eq!(
        (web.passive_failures, web.passive_cooldown),
        (5, Duration::from_secs(30))
    );
    let h = web.health.as_ref().unwrap();
    assert_eq!(
        h.probe,
        Probe::Http {
            path: "/healthz".into(),
            host: "acme.example.com".into()
        }
    );
    assert_eq!((h.healthy_after, h.unhealthy_after), (1, 4));
    assert_eq!(
        api.balance,
        Balance::ConsistentHash(HashKey::Header("x-user".into()))
    );
    assert_eq!(api.host_header.as_deref(), Some("api.internal"));
    assert_eq!(t.routes[0].action, RouteAction::Pool(0));
    assert_eq!(t.routes[2].action, RouteAction::Pool(1));
    match &t.routes[1].action {
        RouteAction::Respond(r) => {
            assert_eq!((r.status, r.body.as_str()), (503, "down\n"));
            assert_eq!(
                r.headers,
                vec![("content-type".to_string(), "text/plain".to_string())]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.sources.len(), 2);
    assert_eq!(c.digest.len(), 16);
}

#[test]
fn a_single_pool_without_routes_gets_everything() {
    let c = tenants(&[(
        "a.toml",
        "id = \"a\"\nhosts = [\"a.test\"]\n[pools.only]\nbackends = [\"127.0.0.1:1\"]\n",
    )])
    .unwrap();
    assert_eq!(
        c.tenants[0].routes,
        vec![RouteConfig {
            path_prefix: "/".into(),
            match_case: true,
            cache: true,
            action: RouteAction::Pool(0)
        }]
    );
    let p = &c.tenants[0].pools[0];
    assert_eq!(
        (p.balance.clone(), p.retries, p.passive_failures),
        (Balance::RoundRobin, 2, 3)
    );
    assert!(p.health.is_none());
}

#[test]
fn tcp_health_and_wildcard_only_probe_host() {
    let c = tenants(&[(
        "a.toml",
        "id = \"a\"\nhosts = [\"*.a.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\nhealth = { tcp = true }\n\
         [pools.q]\nbackends = [\"127.0.0.1:2\"]\nhealth = { path = \"/h\" }\n[[routes]]\npath_prefix = \"/\"\npool = \"p\"\n",
    )])
    .unwrap();
    let pools = &c.tenants[0].pools;
    assert_eq!(pools[0].health.as_ref().unwrap().probe, Probe::Tcp);
    assert_eq!(
        pools[0].health.as_ref().unwrap().interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        pools[1].health.as_ref().unwrap().probe,
        Probe::Http {
            path: "/h".into(),
            host: "a.test".into()
        }
    );
}

#[test]
fn hosts_claimed_twice_across_tenants_are_refused() {
    let a =
        "id = \"a\"\nhosts = [\"x.test\", \"*.w.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let b = "id = \"b\"\nhosts = [\"y.test\", \"X.test.\", \"*.w.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let errs = tenants(&[("b.toml", b), ("a.toml", a)]).unwrap_err();
    let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["hosts[1]", "hosts[2]"]);
    assert!(
        errs.0[0].reason.contains("tenant `a`") && errs.0[0].reason.contains("a.toml"),
        "{}",
        errs.0[0]
    );
    assert!(errs.0[0].file.ends_with("b.toml"));
}

#[test]
fn duplicate_tenant_ids_are_refused() {
    let t = |h: &str| {
        format!("id = \"same\"\nhosts = [\"{h}\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n")
    };
    let errs = tenants(&[("one.toml", &t("a.test")), ("two.toml", &t("b.test"))]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        (errs.0[0].key.as_str(), errs.0[0].file.ends_with("two.toml")),
        ("id", true)
    );
    assert!(errs.0[0].reason.contains("one.toml"));
}

#[test]
fn every_error_in_a_file_is_reported() {
    let bad = r#"
id = "Bad Id"
hosts = ["ok.test", "a.*.test", "port.test:80"]
extra = 1

[pools.web]
backends = ["10.0.0.1", { addr = "10.0.0.2:80", weight = 0 }, { adr = "x" }, 5]
balance = "fastest"
hash_key = "path"
connect_timeout = "2"
health = { path = "healthz", interval = "1s", timeout = "2s", typo = 1 }
passive = { failures = 0 }

[pools.empty]
backends = []
hash_key = "path"

[[routes]]
path_prefix = "api"
pool = "missing"

[[routes]]
path_prefix = "/x"
pool = "web"
respond = { body = "both" }

[[routes]]
path_prefix = "/y"
respond = { status = 99, headers = { "content-length" = "3" } }
"#;
    assert_eq!(
        keys(tenants(&[("bad.toml", bad)])),
        vec![
            k("bad.toml", "id"),
            k("bad.toml", "hosts[1]"),
            k("bad.toml", "hosts[2]"),
            k("bad.toml", "pools.empty.backends"),
            k("bad.toml", "pools.empty.hash_key"),
            k("bad.toml", "pools.web.backends[0]"),
            k("bad.toml", "pools.web.backends[1].weight"),
            k("bad.toml", "pools.web.backends[2].addr"),
            k("bad.toml", "pools.web.backends[2].adr"),
            k("bad.toml", "pools.web.backends[3]"),
            // No hash_key error beside a wrong balance: one mistake, one error.
            k("bad.toml", "pools.web.balance"),
            k("bad.toml", "pools.web.connect_timeout"),
            k("bad.toml", "pools.web.health.path"),
            k("bad.toml", "pools.web.health.timeout"),
            k("bad.toml", "pools.web.health.typo"),
            k("bad.toml", "pools.web.passive.failures"),
            k("bad.toml", "routes[0].path_prefix"),
            k("bad.toml", "routes[0].pool"),
            k("bad.toml", "routes[1]"),
            k("bad.toml", "routes[2].respond.status"),
            k("bad.toml", "routes[2].respond.headers.content-length"),
            k("bad.toml", "extra"),
        ]
    );
}

#[test]
fn structural_errors() {
    let r = tenants(&[("a.toml", "id = \"a\"\nhosts = [\"a.test\"]\n")]);
    assert_eq!(keys(r), vec![k("a.toml", "")]);
    let two = "id = \"a\"\nhosts = [\"a.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n[pools.q]\nbackends = [\"127.0.0.1:2\"]\n";
    assert_eq!(
        keys(tenants(&[("a.toml", two)])),
        vec![k("a.toml", "routes")]
    );
    assert_eq!(
        keys(tenants(&[(
            "a.toml",
            "hosts = []\n[[routes]]\npath_prefix = \"/\"\nrespond = {}\n"
        )])),
        vec![k("a.toml", "id"), k("a.toml", "hosts")]
    );
    let syntax = keys(tenants(&[("a.toml", "id = \n")]));
    assert_eq!(syntax, vec![k("a.toml", "")]);
}

#[test]
fn exact_and_wildcard_of_one_name_may_belong_to_different_tenants() {
    let a = "id = \"a\"\nhosts = [\"w.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let b = "id = \"b\"\nhosts = [\"*.w.test\", \"x.w.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let c = tenants(&[("a.toml", a), ("b.toml", b)]).unwrap();
    assert_eq!(c.tenants.len(), 2);
}

#[test]
fn a_wildcard_claimed_twice_is_refused_in_the_later_file() {
    let t = |id: &str| {
        format!("id = \"{id}\"\nhosts = [\"*.W.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n")
    };
    let errs = tenants(&[("z.toml", &t("z")), ("m.toml", &t("m"))]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs.0[0].file, Path::new("/c/tenants.d/z.toml"));
    assert_eq!(errs.0[0].key, "hosts[0]");
    assert_eq!(
        errs.0[0].reason,
        "`*.w.test` is already claimed by tenant `m` in /c/tenants.d/m.toml"
    );
}

#[test]
fn a_tenant_file_with_errors_claims_nothing() {
    // Refused on its own, it serves nothing, so its id and hosts are free for valid files.
    let a = one_pool("retries = 11", "");
    let b = "id = \"a\"\nhosts = [\"a.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    assert_eq!(
        keys(tenants(&[("a.toml", &a), ("b.toml", b)])),
        vec![k("a.toml", "pools.p.retries")]
    );
    assert_eq!(
        keys(tenants(&[("a.toml", "id = \"a"), ("b.toml", b)])),
        vec![k("a.toml", "")]
    );
}

#[test]
fn the_shipped_examples_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let files = vec![
        (
            root.join("conf/examples/acme.toml"),
            read("conf/examples/acme.toml"),
        ),
        (
            root.join("conf/tenants.d/demo.toml"),
            read("conf/tenants.d/demo.toml"),
        ),
    ];
    let main = root.join("conf/porteiro.toml");
    // The example names certificate files that are not shipped; apart from reading them,
    // everything in it must validate.
    let errs = parse(&main, &read("conf/porteiro.toml"), &files).unwrap_err();
    for e in &errs.0 {
        assert!(
            e.reason.starts_with("cannot read") && e.file.ends_with("acme.toml"),
            "{e}"
        );
    }
    let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["tls.cert", "tls.key", "pools.payments.ca_file"]);
    let c = parse(&main, &read("conf/porteiro.toml"), &files[1..]).unwrap();
    assert_eq!(c.tenants.len(), 1);
    assert_eq!(c.server.tenants_dir, root.join("conf/tenants.d"));

    // The container example (conf/docker/compose.yaml mounts it).
    let docker = root.join("conf/docker/porteiro.toml");
    let app = root.join("conf/docker/tenants.d/app.toml");
    let c = parse(
        &docker,
        &read("conf/docker/porteiro.toml"),
        &[(app, read("conf/docker/tenants.d/app.toml"))],
    )
    .unwrap();
    assert_eq!(c.tenants[0].id, "app");
    assert_eq!(c.server.log_format, LogFormat::Json);
}

#[test]
fn a_cluster_scope_without_a_cluster_is_refused_where_it_is_written() {
    let tenant = one_pool(
        "",
        "[limits]\nrate = { requests = 5 }\nscope = \"cluster\"\n",
    );
    assert_eq!(
        keys(tenants(&[("a.toml", &tenant)])),
        [k("a.toml", "limits.scope")]
    );
    let main = "[limits]\nscope = \"cluster\"\n";
    let r = parse(Path::new("/c/porteiro.toml"), main, &[]);
    assert_eq!(keys(r), [k("porteiro.toml", "limits.scope")]);
    let main = "[limits]\nscope = \"cluster\"\n[cluster]\nredis = \"redis://127.0.0.1:6379\"\n";
    let files = [(PathBuf::from("/c/tenants.d/a.toml"), tenant)];
    let c = parse(Path::new("/c/porteiro.toml"), main, &files).unwrap();
    assert_eq!(c.tenants[0].limits.scope, Some(Scope::Cluster));
    assert_eq!(c.server.cluster.unwrap().expected_nodes, 1);
}

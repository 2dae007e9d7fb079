//! Validation inside one tenant file: defaults, and every kind of mistake with its key path.

use std::path::Path;
use std::time::Duration;

use super::model::*;
use super::tests::{k, keys, one_pool, tenants};

#[test]
fn pool_and_health_defaults() {
    let text =
        "id = \"a\"\nhosts = [\"*.w.test\", \"a.test\"]\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n\
                health = { path = \"/h?full=1\" }\n";
    let c = tenants(&[("a.toml", text)]).unwrap();
    let p = &c.tenants[0].pools[0];
    assert_eq!(
        p.backends,
        vec![BackendConfig {
            addr: "127.0.0.1:1".parse().unwrap(),
            weight: 1
        }]
    );
    assert_eq!(p.balance, Balance::RoundRobin);
    let secs = Duration::from_secs;
    assert_eq!(
        (
            p.connect_timeout,
            p.read_timeout,
            p.write_timeout,
            p.idle_timeout
        ),
        (secs(2), secs(30), secs(30), secs(60))
    );
    assert_eq!((p.retries, p.host_header.as_deref()), (2, None));
    assert_eq!((p.passive_failures, p.passive_cooldown), (3, secs(10)));
    assert_eq!(
        p.health,
        Some(HealthConfig {
            // The first exact host, even when a wildcard is listed before it.
            probe: Probe::Http {
                path: "/h?full=1".into(),
                host: "a.test".into()
            },
            interval: secs(5),
            timeout: secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        })
    );

    let c = tenants(&[(
        "a.toml",
        &one_pool(
            "balance = \"consistent_hash\"\nhealth = { tcp = true, interval = \"500ms\" }",
            "",
        ),
    )])
    .unwrap();
    let p = &c.tenants[0].pools[0];
    assert_eq!(p.balance, Balance::ConsistentHash(HashKey::ClientIp));
    // The default timeout never exceeds a shorter interval.
    assert_eq!(
        p.health.as_ref().map(|h| h.timeout),
        Some(Duration::from_millis(500))
    );
}

#[test]
fn unknown_keys_are_reported_where_they_are_with_a_hint() {
    let text = one_pool(
        "blance = \"random\"\nhealth = { path = \"/h\", intervall = \"1s\" }\npassive = { cooldwn = \"1s\" }\n\
         backends_extra = 1",
        "[[routes]]\npath_prefix = \"/\"\npool = \"p\"\npoool = \"p\"\nrespond_with = 1\n",
    );
    let errs = tenants(&[("a.toml", &text)]).unwrap_err();
    let got: Vec<(&str, &str)> = errs
        .0
        .iter()
        .map(|e| (e.key.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "pools.p.health.intervall",
                "unknown key (did you mean `interval`?)"
            ),
            (
                "pools.p.passive.cooldwn",
                "unknown key (did you mean `cooldown`?)"
            ),
            (
                "pools.p.backends_extra",
                "unknown key (known keys: backends, balance, hash_key, connect_timeout, read_timeout, \
                 write_timeout, idle_timeout, retries, host_header, health, passive, tls, sni, ca_file, insecure_skip_verify, http2, dns_refresh)"
            ),
            ("pools.p.blance", "unknown key (did you mean `balance`?)"),
            ("routes[0].poool", "unknown key (did you mean `pool`?)"),
            (
                "routes[0].respond_with",
                "unknown key (known keys: path_prefix, pool, respond, match_case, cache)"
            ),
        ]
    );
    assert!(errs
        .0
        .iter()
        .all(|e| e.file == Path::new("/c/tenants.d/a.toml")));
}

#[test]
fn wrong_types_are_one_error_each() {
    let text = "id = 7\nhosts = \"a.test\"\npools = 1\nroutes = {}\n";
    let errs = tenants(&[("a.toml", text)]).unwrap_err();
    let got: Vec<(&str, &str)> = errs
        .0
        .iter()
        .map(|e| (e.key.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("id", "expected a string, found integer"),
            ("hosts", "expected an array, found string"),
            ("pools", "expected a table, found integer"),
            ("routes", "expected an array, found table"),
        ]
    );

    let text = "id = \"a\"\nhosts = [\"a.test\", 1]\n[pools.p]\nbackends = \"127.0.0.1:1\"\nbalance = 1\n\
                connect_timeout = 5\nretries = \"2\"\nhost_header = 1\nhealth = true\npassive = []\n\
                [pools.q]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\npath_prefix = 1\npool = [\"p\"]\n";
    assert_eq!(
        keys(tenants(&[("a.toml", text)])),
        vec![
            k("a.toml", "hosts[1]"),
            k("a.toml", "pools.p.backends"),
            k("a.toml", "pools.p.balance"),
            k("a.toml", "pools.p.connect_timeout"),
            k("a.toml", "pools.p.retries"),
            k("a.toml", "pools.p.host_header"),
            k("a.toml", "pools.p.health"),
            k("a.toml", "pools.p.passive"),
            k("a.toml", "routes[0].path_prefix"),
            k("a.toml", "routes[0].pool"),
        ]
    );
}

#[test]
fn backend_errors() {
    let text = one_pool(
        "",
        "[pools.q]\nbackends = [\"backend..internal:80\", \"10.0.0.1:80\", { addr = \"10.0.0.1:80\", weight = 2 }, \
         { addr = \"10.0.0.2:80\", weight = 1001 }, { weight = 2 }, \"10.0.0.3\"]\n\
         [pools.r]\nretries = 1\n[pools.Bad]\nbackends = [\"127.0.0.1:1\"]\n\
         [[routes]]\npath_prefix = \"/\"\npool = \"p\"\n",
    );
    let errs = tenants(&[("a.toml", &text)]).unwrap_err();
    let got: Vec<(&str, &str)> = errs
        .0
        .iter()
        .map(|e| (e.key.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "pools.Bad",
                "`Bad` is not a valid name: use 1-63 of a-z 0-9 _ -, starting with a letter or digit"
            ),
            (
                "pools.q.backends[0]",
                "`backend..internal:80`: is not an IP address or a valid DNS name with a port"
            ),
            ("pools.q.backends[2]", "10.0.0.1:80 is listed twice"),
            ("pools.q.backends[3].weight", "1001 is out of range 1..=1000"),
            ("pools.q.backends[4].addr", "required key is missing"),
            (
                "pools.q.backends[5]",
                "`10.0.0.3`: must be IP:port or name:port"
            ),
            ("pools.r.backends", "required key is missing"),
        ]
    );
}

#[test]
fn hash_key_needs_consistent_hash_and_a_valid_form() {
    let errs = tenants(&[(
        "a.toml",
        &one_pool("balance = \"least_conn\"\nhash_key = \"client_ip\"", ""),
    )])
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs.0[0].key, "pools.p.hash_key");
    assert!(errs.0[0].reason.contains("consistent_hash"), "{errs}");
    // Without any balance (round_robin by default) too.
    let errs = tenants(&[("a.toml", &one_pool("hash_key = \"path\"", ""))]).unwrap_err();
    assert_eq!(errs.0[0].key, "pools.p.hash_key");
    for bad in ["header:", "header:bad name", "cookie", "header"] {
        let text = one_pool(
            &format!("balance = \"consistent_hash\"\nhash_key = \"{bad}\""),
            "",
        );
        let errs = tenants(&[("a.toml", &text)]).unwrap_err();
        assert_eq!(errs.len(), 1, "{bad}: {errs}");
        assert_eq!(errs.0[0].key, "pools.p.hash_key", "{bad}");
    }
    let c = tenants(&[(
        "a.toml",
        &one_pool("balance = \"consistent_hash\"\nhash_key = \"path\"", ""),
    )])
    .unwrap();
    assert_eq!(
        c.tenants[0].pools[0].balance,
        Balance::ConsistentHash(HashKey::Path)
    );
}

#[test]
fn health_errors() {
    let pools = [
        "health = { tcp = false }",
        "health = { path = \"/h\", tcp = true }",
        "health = { tcp = true, host = \"x.test\" }",
        "health = { path = 5 }",
        "health = { path = \"/h\", interval = \"1s\", timeout = \"2s\" }",
        "health = { path = \"/h\", healthy_after = 0, unhealthy_after = 101 }",
        "health = { tcp = true, interval = \"0s\" }",
        "health = { path = \"/a b\" }",
        "health = { path = \"/h\", host = \"bad host\" }",
        "health = { path = \"/h\", host = \"probe.test\" }",
    ];
    let mut text =
        "id = \"a\"\nhosts = [\"a.test\"]\n[[routes]]\npath_prefix = \"/\"\npool = \"p9\"\n"
            .to_string();
    for (i, extra) in pools.iter().enumerate() {
        text += &format!("[pools.p{i}]\nbackends = [\"127.0.0.1:1\"]\n{extra}\n");
    }
    assert_eq!(
        keys(tenants(&[("a.toml", &text)])),
        vec![
            k("a.toml", "pools.p0.health"),
            k("a.toml", "pools.p1.health"),
            k("a.toml", "pools.p2.health.host"),
            k("a.toml", "pools.p3.health.path"),
            k("a.toml", "pools.p4.health.timeout"),
            k("a.toml", "pools.p5.health.healthy_after"),
            k("a.toml", "pools.p5.health.unhealthy_after"),
            k("a.toml", "pools.p6.health.interval"),
            k("a.toml", "pools.p7.health.path"),
            k("a.toml", "pools.p8.health.host"),
        ]
    );
    let c = tenants(&[("a.toml", &one_pool(pools[9], ""))]).unwrap();
    assert_eq!(
        c.tenants[0].pools[0]
            .health
            .as_ref()
            .map(|h| h.probe.clone()),
        Some(Probe::Http {
            path: "/h".into(),
            host: "probe.test".into()
        })
    );
}

#[test]
fn route_errors() {
    let routes = [
        "path_prefix = \"/a b\"\npool = \"p\"",
        "path_prefix = \"/x?y\"\npool = \"p\"",
        "pool = \"p\"",
        "path_prefix = \"/\"\npool = \"p\"",
        "path_prefix = \"/\"\nrespond = {}",
        "path_prefix = \"/r\"\nrespond = { headers = { \"Connection\" = \"close\", \"X-Fine\" = \"v\", \
         \"bad header\" = \"x\", \"x-ok\" = \"a\\nb\", \"x-num\" = 1 } }",
        "path_prefix = \"/m\"\npool = \"nope\"",
        "path_prefix = \"/n\"",
    ];
    let rest: String = routes
        .iter()
        .map(|r| format!("[[routes]]\n{r}\n"))
        .collect();
    let errs = tenants(&[("a.toml", &one_pool("", &rest))]).unwrap_err();
    let got: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "routes[0].path_prefix",
            "routes[1].path_prefix",
            "routes[2].path_prefix",
            "routes[4].path_prefix",
            "routes[5].respond.headers.Connection",
            "routes[5].respond.headers.bad header",
            "routes[5].respond.headers.x-num",
            "routes[5].respond.headers.x-ok",
            "routes[6].pool",
            "routes[7]",
        ]
    );
    assert_eq!(errs.0[2].reason, "required key is missing");
    assert_eq!(errs.0[3].reason, "`/` is routed twice");
    assert_eq!(errs.0[8].reason, "no pool named `nope` (pools: p)");
}

#[test]
fn respond_only_tenants_need_no_pool() {
    let c = tenants(&[(
        "a.toml",
        "id = \"a\"\nhosts = [\"a.test\"]\n[[routes]]\npath_prefix = \"/\"\nrespond = {}\n",
    )])
    .unwrap();
    assert_eq!(
        c.tenants[0].routes[0].action,
        RouteAction::Respond(StaticResponse {
            status: 200,
            body: String::new(),
            headers: Vec::new()
        })
    );
    // An unused pool is allowed (say, one being prepared).
    let text = one_pool(
        "",
        "[pools.spare]\nbackends = [\"127.0.0.1:2\"]\n[[routes]]\npath_prefix = \"/\"\npool = \"p\"\n",
    );
    assert!(tenants(&[("a.toml", &text)]).is_ok());
}

#[test]
fn tenants_with_nothing_to_serve() {
    let cases = [
        // Neither pools nor routes.
        ("id = \"a\"\nhosts = [\"a.test\"]\n", ""),
        ("id = \"a\"\nhosts = [\"a.test\"]\npools = {}\n", "pools"),
        (
            "id = \"a\"\nhosts = [\"a.test\"]\nroutes = []\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n",
            "routes",
        ),
        (
            "id = \"a\"\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n",
            "hosts",
        ),
    ];
    for (text, key) in cases {
        assert_eq!(
            keys(tenants(&[("a.toml", text)])),
            vec![k("a.toml", key)],
            "{text}"
        );
    }
    // A misspelt `routes` is one error, not also "required with more than one pool".
    let text = format!(
        "routes = \"/\"\n{}",
        one_pool("", "[pools.q]\nbackends = [\"127.0.0.1:2\"]\n")
    );
    assert_eq!(
        keys(tenants(&[("a.toml", &text)])),
        vec![k("a.toml", "routes")]
    );
}

#[test]
fn upstream_tls_keys() {
    let c = tenants(&[(
        "a.toml",
        &one_pool("tls = true\nhealth = { path = \"/h\" }\n", ""),
    )])
    .unwrap();
    let p = &c.tenants[0].pools[0];
    let tls = p.tls.as_ref().unwrap();
    // SNI defaults to the tenant's first exact host; the HTTP check goes over TLS too.
    assert_eq!(
        (tls.sni.as_str(), tls.insecure_skip_verify),
        ("a.test", false)
    );
    assert!(matches!(
        p.health.as_ref().map(|h| &h.probe),
        Some(Probe::Https { sni, .. }) if sni == "a.test"
    ));
    let with_host = one_pool("tls = true\nhost_header = \"in.test\"\n", "");
    let c = tenants(&[("a.toml", &with_host)]).unwrap();
    assert_eq!(c.tenants[0].pools[0].tls.as_ref().unwrap().sni, "in.test");
    let with_port = one_pool("tls = true\nhost_header = \"In.Test:8443\"\n", "");
    let c = tenants(&[("a.toml", &with_port)]).unwrap();
    assert_eq!(c.tenants[0].pools[0].tls.as_ref().unwrap().sni, "in.test");
    let not_a_name = one_pool("tls = true\nhost_header = \"in test\"\n", "");
    assert_eq!(
        keys(tenants(&[("a.toml", &not_a_name)])),
        vec![k("a.toml", "pools.p.host_header")]
    );

    let without_tls = one_pool("sni = \"x.test\"\nhttp2 = true\n", "");
    assert_eq!(
        keys(tenants(&[("a.toml", &without_tls)])),
        vec![k("a.toml", "pools.p.sni"), k("a.toml", "pools.p.http2")]
    );
    let both = one_pool(
        "tls = true\nca_file = \"ca.pem\"\ninsecure_skip_verify = true\nsni = \"*.x\"\n",
        "",
    );
    assert_eq!(
        keys(tenants(&[("a.toml", &both)])),
        vec![
            k("a.toml", "pools.p.sni"),
            k("a.toml", "pools.p.insecure_skip_verify"),
            // Files are read even when other keys are wrong, so every error shows at once.
            k("a.toml", "pools.p.ca_file"),
        ]
    );
}

#[test]
fn tenant_tls_keys() {
    let ok = "id = \"a\"\nhosts = [\"a.test\"]\nhttps_redirect = true\n\
              hsts = \"max-age=60; includeSubDomains\"\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    let c = tenants(&[("a.toml", ok)]).unwrap();
    let t = &c.tenants[0];
    assert!(t.https_redirect);
    assert_eq!(t.hsts.as_deref(), Some("max-age=60; includeSubDomains"));
    let bad = "id = \"a\"\nhosts = [\"a.test\"]\nhsts = \"includeSubDomains\"\n\
               tls = { cert = \"c.pem\" }\n[pools.p]\nbackends = [\"127.0.0.1:1\"]\n";
    assert_eq!(
        keys(tenants(&[("a.toml", bad)])),
        vec![k("a.toml", "tls.key"), k("a.toml", "hsts")]
    );
}

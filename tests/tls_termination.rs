//! TLS as a real client sees it: certificates by SNI, the default certificate, h2 by ALPN,
//! 421 on SNI/Host mismatch, redirect and HSTS, TLS to backends, rotation, and bad files.
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::tls::*;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// A tenant file with top-level `extra` keys and one pool over `backend`.
fn tenant(id: &str, hosts: &[&str], extra: &str, backend: SocketAddr, pool_extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "id = \"{id}\"\nhosts = [{}]\n{extra}\n[pools.web]\nbackends = [\"{backend}\"]\n{pool_extra}\n",
        hosts.join(", ")
    )
}

/// A config directory whose main file also has a TLS listener; returns it and that address.
fn tls_config(server_extra: &str) -> (ConfigDir, SocketAddr) {
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = ConfigDir::new(&format!("listen_tls = [\"{tls}\"]\n{server_extra}"));
    (cfg, tls)
}

/// A client that trusts `ca` and reaches `name` at `addr` (so SNI is `name`).
fn client_for(ca: &Ca, name: &str, addr: SocketAddr) -> reqwest::Client {
    builder_for(ca, name, addr).build().unwrap()
}

fn builder_for(ca: &Ca, name: &str, addr: SocketAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .resolve(name, addr)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
}

/// The leaf certificate the server presented.
fn peer_der(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

/// TLS listeners start with the proxy service; wait (bounded) until this one accepts.
fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sni_picks_each_tenants_certificate_and_h2_is_negotiated() {
    let backend = Backend::start("app").await;
    let ca = Ca::new();
    let (a_cert, b_cert) = (ca.issue(&["a.test"]), ca.issue(&["*.b.test"]));
    let (cfg, tls) = tls_config("");
    write_cert(&cfg, "a", &a_cert);
    write_cert(&cfg, "b", &b_cert);
    cfg.tenant(
        "a.toml",
        &tenant("a", &["a.test"], &tls_key("a"), backend.addr, ""),
    )
    .tenant(
        "b.toml",
        &tenant("b", &["*.b.test"], &tls_key("b"), backend.addr, ""),
    );
    let proxy = Proxy::start(&cfg);
    wait_listening(tls);

    let r = client_for(&ca, "a.test", tls)
        .get(format!("https://a.test:{}/x", tls.port()))
        .send()
        .await
        .expect("verified TLS to a.test");
    assert_eq!(peer_der(&r), a_cert.der);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-backend"], "app");

    let r = client_for(&ca, "www.b.test", tls)
        .get(format!("https://www.b.test:{}/", tls.port()))
        .send()
        .await
        .expect("verified TLS to the wildcard");
    assert_eq!(peer_der(&r), b_cert.der);
    assert_eq!(r.status(), 200);
    let seen = backend.seen();
    assert!(
        seen.iter()
            .all(|s| s.header("x-forwarded-proto") == ["https"]),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 2);
    drop(proxy);
}

#[tokio::test]
async fn no_sni_gets_the_default_certificate_or_no_handshake_at_all() {
    let backend = Backend::start("app").await;
    let ca = Ca::new();
    let default = ca.issue(&["default.test"]);
    let (cfg, tls) = tls_config(
        "default_certificate = { cert = \"certs/default.pem\", key = \"certs/default.key\" }",
    );
    write_cert(&cfg, "default", &default);
    write_cert(&cfg, "a", &ca.issue(&["a.test"]));
    cfg.tenant(
        "a.toml",
        &tenant("a", &["a.test"], &tls_key("a"), backend.addr, ""),
    );
    let proxy = Proxy::start(&cfg);
    wait_listening(tls);
    let no_sni = || {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_sni(false)
            .http1_only()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let r = no_sni()
        .get(format!("https://127.0.0.1:{}/", tls.port()))
        .header("host", "a.test")
        .send()
        .await
        .expect("handshake with the default certificate");
    assert_eq!(peer_der(&r), default.der);
    // Without SNI the Host alone routes.
    assert_eq!(r.status(), 200);
    drop(proxy);

    // The same without a default certificate: the handshake is refused.
    cfg.write_main(&format!("listen_tls = [\"{tls}\"]"));
    let proxy = Proxy::start(&cfg);
    wait_listening(tls);
    let refused = no_sni()
        .get(format!("https://127.0.0.1:{}/", tls.port()))
        .header("host", "a.test")
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let unknown_sni = client_for(&ca, "nobody.test", tls)
        .get(format!("https://nobody.test:{}/", tls.port()))
        .send()
        .await;
    assert!(unknown_sni.is_err(), "{unknown_sni:?}");
    assert_eq!(backend.hits(), 1);
    drop(proxy);
}

#[tokio::test]
async fn a_host_of_another_tenant_gets_421_and_is_not_forwarded() {
    let backend = Backend::start("app").await;
    let ca = Ca::new();
    let (cfg, tls) = tls_config("");
    write_cert(&cfg, "a", &ca.issue(&["a.test"]));
    write_cert(&cfg, "b", &ca.issue(&["b.test"]));
    cfg.tenant(
        "a.toml",
        &tenant("a", &["a.test"], &tls_key("a"), backend.addr, ""),
    )
    .tenant(
        "b.toml",
        &tenant("b", &["b.test"], &tls_key("b"), backend.addr, ""),
    );
    let _proxy = Proxy::start(&cfg);
    wait_listening(tls);
    // HTTP/1.1, where Host is free to differ from SNI (in HTTP/2 a Host that differs from
    // :authority is a malformed request, refused before routing).
    let c = builder_for(&ca, "a.test", tls)
        .http1_only()
        .build()
        .unwrap();
    let url = format!("https://a.test:{}/", tls.port());
    let fronted = c.get(&url).header("host", "b.test").send().await.unwrap();
    assert_eq!(fronted.status(), 421);
    let unknown = c.get(&url).header("host", "c.test").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(backend.hits(), 0);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn plain_http_is_redirected_and_hsts_is_sent_over_tls_only() {
    let backend = Backend::start("app").await;
    let ca = Ca::new();
    let (cfg, tls) = tls_config("https_port = 8443");
    write_cert(&cfg, "a", &ca.issue(&["a.test"]));
    let extra = format!(
        "{}https_redirect = true\nhsts = \"max-age=600; includeSubDomains\"\n",
        tls_key("a")
    );
    cfg.tenant(
        "a.toml",
        &tenant("a", &["a.test"], &extra, backend.addr, ""),
    );
    let proxy = Proxy::start(&cfg);
    wait_listening(tls);
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = send(plain.get(proxy.url("/p?q=1")).header("host", "a.test:80")).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://a.test:8443/p?q=1");
    assert!(r.headers.get("strict-transport-security").is_none());
    let acme = get(&plain, &proxy, "a.test", "/.well-known/acme-challenge/t").await;
    assert_eq!(acme.status, 200, "ACME challenges stay on plain HTTP");
    assert!(acme.headers.get("strict-transport-security").is_none());

    let r = client_for(&ca, "a.test", tls)
        .get(format!("https://a.test:{}/p", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=600; includeSubDomains"
    );
    // porteiro's own answers over TLS carry it too.
    let refused = client_for(&ca, "a.test", tls)
        .get(format!("https://a.test:{}/x%00", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.headers()["strict-transport-security"],
        "max-age=600; includeSubDomains"
    );
}

/// A backend that speaks HTTPS with `issued` (HTTP/2 or HTTP/1.1 by ALPN); it answers with
/// the protocol version it received in `x-backend-version`.
async fn tls_backend(issued: &Issued) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("x-backend", "tls-backend")
                            .header("x-backend-version", format!("{:?}", req.version()))
                            .body(http_body_util::Full::new(bytes::Bytes::from("secure\n")))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn backends_over_tls_are_verified_against_the_configured_ca() {
    let ca = Ca::new();
    let other_ca = Ca::new();
    let backend = tls_backend(&ca.issue(&["backend.test"])).await;
    let cfg = ConfigDir::new("");
    std::fs::create_dir_all(cfg.dir.path().join("certs")).unwrap();
    std::fs::write(cfg.dir.path().join("certs/ca.pem"), ca.pem()).unwrap();
    std::fs::write(cfg.dir.path().join("certs/other-ca.pem"), other_ca.pem()).unwrap();
    let pool = |ca_file: &str| {
        format!("tls = true\nsni = \"backend.test\"\nca_file = \"certs/{ca_file}\"\nretries = 0\n")
    };
    cfg.tenant(
        "good.toml",
        &tenant("good", &["good.test"], "", backend, &pool("ca.pem")),
    )
    .tenant(
        "bad.toml",
        &tenant("bad", &["bad.test"], "", backend, &pool("other-ca.pem")),
    );
    let proxy = Proxy::start(&cfg);
    let c = client();
    let ok = get(&c, &proxy, "good.test", "/").await;
    assert_eq!(
        (ok.status, ok.backend.as_deref()),
        (200, Some("tls-backend"))
    );
    // More failed handshakes than `passive.failures` (3): the bad pool takes the backend out
    // of its own service only; the tenant that verifies it correctly keeps it.
    let mut refused = Vec::new();
    for _ in 0..5 {
        refused.push(get(&c, &proxy, "bad.test", "/").await.status);
    }
    assert_eq!(refused, [502, 502, 502, 503, 503]);
    let still = get(&c, &proxy, "good.test", "/").await;
    assert_eq!(
        still.status, 200,
        "one tenant's CA mistake ejected a shared backend"
    );
    let backend_text = backend.to_string();
    eventually(WAIT, "a log line naming tenant and backend", || async {
        proxy
            .logs()
            .lines()
            .any(|l| l.contains("request failed") && l.contains("bad") && l.contains(&backend_text))
    })
    .await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_clients() {
    let backend = Backend::start("app").await;
    let ca = Ca::new();
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let (cfg, tls) = tls_config("");
    write_cert(&cfg, "a", &old);
    cfg.tenant(
        "a.toml",
        &tenant("a", &["a.test"], &tls_key("a"), backend.addr, ""),
    );
    let _proxy = Proxy::start(&cfg);
    wait_listening(tls);
    let url = format!("https://a.test:{}/", tls.port());
    let served = || async {
        let r = client_for(&ca, "a.test", tls)
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        peer_der(&r)
    };
    assert_eq!(served().await, old.der);
    // Written in place, same paths, as certbot's deploy hooks or cert-manager do.
    write_cert(&cfg, "a", &new);
    eventually(WAIT, "new handshakes get the new certificate", || async {
        served().await == new.der
    })
    .await;
}

/// Files to write under certs/, the tenant's tls key, and what stderr must show.
type Case<'a> = (Vec<(&'a str, String)>, &'a str, [&'a str; 2]);

#[test]
fn check_names_the_file_and_the_problem_for_every_bad_certificate() {
    let ca = Ca::new();
    let good = ca.issue(&["a.test"]);
    let other = ca.issue(&["a.test"]);
    let elsewhere = ca.issue(&["elsewhere.test"]);
    let a_tls = tls_key("a");
    // (what the files hold, the tls key, the fragments stderr must show)
    let cases: Vec<Case> = vec![
        (
            vec![],
            "tls = { cert = \"certs/missing.pem\", key = \"certs/missing.key\" }",
            ["certs/missing.pem", "cannot read"],
        ),
        (
            vec![
                ("a.pem", good.key_pem.clone()),
                ("a.key", good.key_pem.clone()),
            ],
            &a_tls,
            ["certs/a.pem", "no PEM certificate"],
        ),
        (
            vec![
                ("a.pem", good.cert_pem.clone()),
                ("a.key", good.cert_pem.clone()),
            ],
            &a_tls,
            ["certs/a.key", "no PEM private key"],
        ),
        (
            vec![
                ("a.pem", good.cert_pem.clone()),
                ("a.key", other.key_pem.clone()),
            ],
            &a_tls,
            ["certs/a.key", "does not match"],
        ),
        (
            vec![
                ("a.pem", elsewhere.cert_pem.clone()),
                ("a.key", elsewhere.key_pem.clone()),
            ],
            &a_tls,
            ["certs/a.pem", "covers none"],
        ),
    ];
    for (files, tls, expected) in cases {
        let cfg = ConfigDir::new("");
        let dir = cfg.dir.path().join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        cfg.tenant("a.toml", &tenant("a", &["a.test"], tls, dead_addr(), ""));
        let (code, _out, err) = check(&cfg.main_file());
        assert_eq!(code, 1, "{tls}: {err}");
        assert!(err.contains("a.toml: tls."), "{err}");
        for fragment in expected {
            assert!(err.contains(fragment), "`{fragment}` missing from:\n{err}");
        }
    }
}

/// One tenant's lapsed certificate or broken file must not be everyone's outage: porteiro
/// starts, serves the expired certificate with a warning (the expiry metric feeds the alert),
/// leaves the broken file out, and serves every other tenant. `check` still fails.
#[tokio::test]
async fn an_expired_certificate_and_a_broken_tenant_file_do_not_stop_the_others() {
    let backend = Backend::start("app").await;
    let ca = Ca::new();
    let (cfg, tls) = tls_config("");
    write_cert(
        &cfg,
        "a",
        &ca.issue_between(&["a.test"], (2020, 1, 1), (2021, 1, 1)),
    );
    cfg.tenant(
        "a.toml",
        &tenant("a", &["a.test"], &tls_key("a"), backend.addr, ""),
    )
    .tenant("b.toml", "id = \"b\"\nhosts = [\"b.test\"]\n")
    .tenant("c.toml", &tenant("c", &["c.test"], "", backend.addr, ""));

    let (code, _out, err) = check(&cfg.main_file());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("warning: ") && err.contains("expired"),
        "{err}"
    );
    assert!(err.contains("error: ") && err.contains("b.toml"), "{err}");

    let proxy = Proxy::start(&cfg);
    wait_listening(tls);
    let c = client();
    assert_eq!(get(&c, &proxy, "c.test", "/").await.status, 200);
    assert_eq!(
        get(&c, &proxy, "b.test", "/").await.status,
        404,
        "b is not served"
    );
    let lenient = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .resolve("a.test", tls)
        .build()
        .unwrap();
    let r = lenient
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the expired certificate is served");
    let status = proxy.config_status().await;
    assert!(
        status["warnings"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{status}"
    );
    assert!(
        status["tenant_errors"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("b.toml"),
        "{status}"
    );
    assert!(
        status["tenant_errors"][0]["serving_last_good"].is_null(),
        "{status}"
    );
    let text = proxy.scrape().await;
    let expiry = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"porteiro_certificate_expiry_timestamp_seconds{tenant="a"} "#)
        })
        .expect("expiry series for a");
    // The certificate's notAfter, 2021-01-01T00:00:00Z.
    assert_eq!(expiry.parse::<f64>().unwrap(), 1_609_459_200.0, "{expiry}");
}

//! Properties of path handling over generated paths: normalising is idempotent and never
//! climbs above `/`, and no path a backend would route to a protected prefix gets past that
//! prefix's route in porteiro.

use proptest::prelude::*;

use super::paths::{normalize_path, PathRoutes};
use super::target::inspect;

/// Path pieces chosen to hit the interesting cases: dot segments plain and escaped, encoded
/// slashes, letter case, parameters, escaped escapes.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E%2e", "%2F", "%2f", "admin", "ADMIN", "Admin", "%41",
        "%61dmin", "a", "b", "api", ";", ";x", "%3B", "%25", "%2541", "~", "%7E", "%20", "é",
        "%C3%A9", "\\", "%5C", "-", "x.y",
    ])
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..8).prop_map(|p| format!("/{}", p.concat()))
}

/// What a typical backend routes by: every escape decoded once, `;` parameters dropped
/// (Java), dot segments resolved and repeated slashes merged; lowercased when `fold`.
fn backend_view(path: &str, fold: bool) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) if bytes[i] == b'%' => {
                decoded.push(b);
                i += 3;
            }
            _ => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let view = format!("/{}", out.join("/"));
    if fold {
        view.to_ascii_lowercase()
    } else {
        view
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn normalising_twice_is_normalising_once(p in path()) {
        if let Ok(once) = normalize_path(&p) {
            let once = once.unwrap_or(p.clone());
            prop_assert_eq!(normalize_path(&once), Ok(None), "{} -> {}", p, once);
        }
    }

    #[test]
    fn a_normalised_path_never_climbs_above_the_root(p in path()) {
        if let Ok(n) = normalize_path(&p) {
            let n = n.unwrap_or(p.clone());
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{}", n);
            prop_assert!(n.split('/').all(|s| s != ".." && s != "."), "{}", n);
        }
    }

    #[test]
    fn what_a_backend_routes_to_a_protected_prefix_porteiro_routes_there_too(
        p in path(),
        fold in any::<bool>(),
    ) {
        let routes = PathRoutes::new(vec![
            ("/".to_string(), true, "open"),
            ("/admin".to_string(), !fold, "protected"),
            ("/api/admin".to_string(), !fold, "protected"),
        ]);
        let backend = backend_view(&p, fold);
        let protected = ["/admin", "/api/admin"]
            .iter()
            .any(|prefix| backend.starts_with(prefix));
        // Tenants refuse `;` parameters by default, so those requests never reach a backend.
        if let Ok(t) = inspect(false, p.as_bytes(), &p) {
            if protected && !t.has_parameters {
                prop_assert_eq!(
                    routes.lookup(t.route_path(&p)),
                    Some(&"protected"),
                    "{} is {} to a backend, routed as {}", p, backend, t.route_path(&p)
                );
            }
        }
    }
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
}

/// A host as a client might write it: letter case, a port, a trailing dot.
fn spelled(host: &str, upper: bool, port: Option<u16>, dot: bool) -> String {
    let mut h = if upper {
        host.to_ascii_uppercase()
    } else {
        host.to_string()
    };
    if dot {
        h.push('.');
    }
    if let Some(p) = port {
        h.push_str(&format!(":{p}"));
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalising_a_host_twice_is_normalising_once(raw in "[A-Za-z0-9.:\\[\\]-]{0,30}") {
        if let Some(once) = super::normalize_host(&raw) {
            let twice = super::normalize_host(&once).map(|c| c.into_owned());
            prop_assert_eq!(twice.as_deref(), Some(once.as_ref()));
        }
    }

    #[test]
    fn hosts_match_their_pattern_and_nothing_else(
        base in prop::collection::vec(label(), 2..4),
        sub in prop::collection::vec(label(), 1..3),
        other in label(),
        upper in any::<bool>(),
        port in prop::option::of(1u16..),
        dot in any::<bool>(),
    ) {
        use crate::config::model::HostPattern;
        let base = base.join(".");
        let mut table = super::HostTable::new();
        table.insert(&HostPattern::Exact(base.clone()), "exact");
        table.insert(&HostPattern::Wildcard(base.clone()), "wildcard");
        let under = format!("{}.{base}", sub.join("."));
        prop_assert_eq!(table.lookup(&spelled(&base, upper, port, dot)), Some(&"exact"));
        prop_assert_eq!(table.lookup(&spelled(&under, upper, port, dot)), Some(&"wildcard"));
        // A name that merely ends with the same characters is not under the suffix.
        let glued = format!("{other}{base}");
        prop_assert_eq!(table.lookup(&glued), None);
        let empty_label = format!("{}..{base}", sub.join("."));
        prop_assert_eq!(table.lookup(&empty_label), None);
    }
}

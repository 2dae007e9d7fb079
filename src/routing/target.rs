//! The request target: which forms porteiro accepts, and the paths it routes and forwards.
//! Pure: it sees the method, the target as sent and the parsed path, nothing else.

use super::paths::{has_path_parameters, normalize_path, routing_view};

/// How a request's path is routed and forwarded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutedTarget {
    /// The path to forward when it differs from the one sent: normalised, and origin-form
    /// for an absolute-form target.
    pub forward: Option<String>,
    /// The path to route by when it differs from `forward` (see `routing_view`).
    pub route: Option<String>,
    /// The path has `;` parameters, which a tenant must allow.
    pub has_parameters: bool,
}

impl RoutedTarget {
    /// The path to route by, given the path the request was parsed with.
    pub fn route_path<'a>(&'a self, parsed: &'a str) -> &'a str {
        self.route
            .as_deref()
            .or(self.forward.as_deref())
            .unwrap_or(parsed)
    }
}

/// A target porteiro answers with 400.
#[derive(Debug, PartialEq, Eq)]
pub enum BadTarget {
    /// Not origin-form (`/...`), absolute-form with an http(s) scheme, or `*` for OPTIONS:
    /// `admin`, `./admin` or `a.test/admin` would be routed as `/` and forwarded as sent.
    Form,
    /// A path backends read in different ways (see `normalize_path` and `routing_view`).
    Ambiguous,
}

/// Checks the target's form and works out the paths to route and forward.
/// `raw` is the target as the client sent it; `path` the path pingora parsed from it.
pub fn inspect(is_options: bool, raw: &[u8], path: &str) -> Result<RoutedTarget, BadTarget> {
    let absolute = match raw.first() {
        Some(b'/') => false,
        Some(b'*') if raw.len() == 1 && is_options => {
            // `OPTIONS *` asks about the server: route it as `/`, forward it as sent.
            return Ok(RoutedTarget {
                route: Some("/".into()),
                ..RoutedTarget::default()
            });
        }
        _ if has_http_scheme(raw) && path.starts_with('/') => true,
        _ => return Err(BadTarget::Form),
    };
    let normal = normalize_path(path).map_err(|_| BadTarget::Ambiguous)?;
    let forward = match (normal, absolute) {
        (Some(n), _) => Some(n),
        // Backends get origin-form, the form they are sure to read as porteiro did.
        (None, true) => Some(path.to_string()),
        (None, false) => None,
    };
    let normal = forward.as_deref().unwrap_or(path);
    let route = routing_view(path, normal).map_err(|_| BadTarget::Ambiguous)?;
    // Decoded too: a backend that decodes before it strips parameters reads `%3B` as `;`.
    let has_parameters = has_path_parameters(route.as_deref().unwrap_or(normal));
    Ok(RoutedTarget {
        has_parameters,
        forward,
        route,
    })
}

fn has_http_scheme(raw: &[u8]) -> bool {
    let starts = |prefix: &[u8]| {
        raw.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    starts(b"http://") || starts(b"https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str, path: &str) -> RoutedTarget {
        inspect(false, raw.as_bytes(), path).expect("accepted")
    }

    #[test]
    fn only_origin_absolute_and_asterisk_forms() {
        assert_eq!(ok("/x", "/x"), RoutedTarget::default());
        let abs = ok("http://a.test/admin?q", "/admin");
        assert_eq!(abs.forward.as_deref(), Some("/admin"));
        assert_eq!(abs.route_path("/admin"), "/admin");
        assert_eq!(ok("HTTPS://a.test/x", "/x").forward.as_deref(), Some("/x"));
        let star = inspect(true, b"*", "*").unwrap();
        assert_eq!((star.route_path("*"), star.forward.as_deref()), ("/", None));
        for (raw, path) in [
            ("admin", "admin"),
            ("./admin", "./admin"),
            ("x/../../admin", "x/../../admin"),
            ("a.test/admin", "a.test/admin"),
            ("foo:bar://a.test/admin", "/admin"),
            ("?x", "/"),
            ("", "/"),
            ("ftp://a.test/admin", "/admin"),
            ("*", "*"),
        ] {
            assert_eq!(
                inspect(false, raw.as_bytes(), path),
                Err(BadTarget::Form),
                "{raw}"
            );
        }
    }

    #[test]
    fn paths_to_route_and_forward() {
        let t = ok("/api/../admin", "/api/../admin");
        assert_eq!(t.forward.as_deref(), Some("/admin"));
        let t = ok("/api%2Fadmin/x", "/api%2Fadmin/x");
        assert_eq!(
            (t.forward.as_deref(), t.route_path("")),
            (None, "/api/admin/x")
        );
        assert!(ok("/;/admin", "/;/admin").has_parameters);
        assert!(!ok("/a", "/a").has_parameters);
        assert_eq!(
            inspect(false, b"/x%2F..%2Fadmin", "/x%2F..%2Fadmin"),
            Err(BadTarget::Ambiguous)
        );
        assert_eq!(
            inspect(false, b"/..;/admin", "/..;/admin"),
            Err(BadTarget::Ambiguous)
        );
    }
}

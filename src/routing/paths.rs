//! Path-prefix routes within one tenant: the longest matching prefix wins.

/// Routes sorted by prefix length, longest first, so the first match is the longest.
#[derive(Debug, Clone)]
pub struct PathRoutes<T> {
    routes: Vec<(Box<str>, T)>,
}

impl<T> PathRoutes<T> {
    pub fn new(mut routes: Vec<(String, T)>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Self {
            routes: routes
                .into_iter()
                .map(|(p, t)| (p.into_boxed_str(), t))
                .collect(),
        }
    }

    /// A plain byte-prefix match, as nginx's `location /prefix`: `/api` matches `/apix` too,
    /// which is why examples end prefixes with `/` when they mean a directory.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_ref()))
            .map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let r = PathRoutes::new(vec![
            ("/".to_string(), "web"),
            ("/api/v2/".to_string(), "v2"),
            ("/api/".to_string(), "api"),
        ]);
        assert_eq!(r.lookup("/api/v2/users"), Some(&"v2"));
        assert_eq!(r.lookup("/api/v1/users"), Some(&"api"));
        assert_eq!(r.lookup("/api"), Some(&"web"));
        assert_eq!(r.lookup("/index.html"), Some(&"web"));
    }

    #[test]
    fn no_match_without_a_root_route() {
        let r = PathRoutes::new(vec![("/status".to_string(), 1)]);
        assert_eq!(r.lookup("/"), None);
        assert_eq!(r.lookup("/status/x"), Some(&1));
    }
}

/// The path a request is routed by: dot segments (`.`, `..`, also percent-encoded) resolved
/// as RFC 3986 5.2.4 does, and repeated slashes merged, so `/api/../admin` is routed (and
/// forwarded) as `/admin`, the path a backend would serve. `None` when nothing changes, the
/// common case, which allocates nothing.
pub fn normalize_path(path: &str) -> Option<String> {
    let suspicious =
        path.contains("//") || path.split('/').any(|seg| is_dot(seg) || is_dot_dot(seg));
    if !suspicious {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        if is_dot(seg) {
            trailing_slash = i == last;
        } else if is_dot_dot(seg) {
            out.pop();
            trailing_slash = i == last;
        } else if seg.is_empty() {
            trailing_slash = i == last;
        } else {
            out.push(seg);
            trailing_slash = false;
        }
    }
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    (normal != path).then_some(normal)
}

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    matches!(seg.len(), 2 | 4 | 6) && seg.to_ascii_lowercase().replace("%2e", ".").eq("..")
}

#[cfg(test)]
mod normalize_tests {
    use super::normalize_path;

    #[test]
    fn dot_segments_and_double_slashes() {
        assert_eq!(normalize_path("/api/users"), None);
        assert_eq!(normalize_path("/"), None);
        assert_eq!(normalize_path("/api/../admin").as_deref(), Some("/admin"));
        assert_eq!(
            normalize_path("/api/%2e%2E/admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(normalize_path("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(normalize_path("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(normalize_path("//api//x").as_deref(), Some("/api/x"));
        assert_eq!(normalize_path("/a/..").as_deref(), Some("/"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a..b/.c"), None);
    }
}

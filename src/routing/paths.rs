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

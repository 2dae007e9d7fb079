//! Path-prefix routes within one tenant: the longest matching prefix wins.

/// Routes sorted by prefix length, longest first, so the first match is the longest.
#[derive(Debug, Clone)]
pub struct PathRoutes<T> {
    routes: Vec<PathRoute<T>>,
}

#[derive(Debug, Clone)]
struct PathRoute<T> {
    prefix: Box<str>,
    /// `match_case = false`: compare ASCII letters without case.
    fold_case: bool,
    target: T,
}

impl<T> PathRoute<T> {
    fn matches(&self, path: &str) -> bool {
        let (path, prefix) = (path.as_bytes(), self.prefix.as_bytes());
        match path.get(..prefix.len()) {
            Some(head) if self.fold_case => head.eq_ignore_ascii_case(prefix),
            Some(head) => head == prefix,
            None => false,
        }
    }
}

impl<T> PathRoutes<T> {
    /// `(prefix, match_case, target)` for each route.
    pub fn new(routes: Vec<(String, bool, T)>) -> Self {
        let mut routes: Vec<PathRoute<T>> = routes
            .into_iter()
            .map(|(p, match_case, target)| PathRoute {
                prefix: p.into_boxed_str(),
                fold_case: !match_case,
                target,
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    /// A plain byte-prefix match, as nginx's `location /prefix`: `/api` matches `/apix` too,
    /// which is why examples end prefixes with `/` when they mean a directory.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|r| r.matches(path))
            .map(|r| &r.target)
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
            ("/".to_string(), true, "web"),
            ("/api/v2/".to_string(), true, "v2"),
            ("/api/".to_string(), true, "api"),
        ]);
        assert_eq!(r.lookup("/api/v2/users"), Some(&"v2"));
        assert_eq!(r.lookup("/api/v1/users"), Some(&"api"));
        assert_eq!(r.lookup("/api"), Some(&"web"));
        assert_eq!(r.lookup("/index.html"), Some(&"web"));
    }

    #[test]
    fn no_match_without_a_root_route() {
        let r = PathRoutes::new(vec![("/status".to_string(), true, 1)]);
        assert_eq!(r.lookup("/"), None);
        assert_eq!(r.lookup("/status/x"), Some(&1));
    }

    #[test]
    fn match_case_false_folds_ascii_letters_only() {
        let r = PathRoutes::new(vec![
            ("/".to_string(), true, "web"),
            ("/admin".to_string(), false, "admin"),
            ("/Docs".to_string(), true, "docs"),
        ]);
        assert_eq!(r.lookup("/ADMIN/x"), Some(&"admin"));
        assert_eq!(r.lookup("/aDmIn"), Some(&"admin"));
        assert_eq!(r.lookup("/docs"), Some(&"web"), "case-sensitive by default");
        assert_eq!(r.lookup("/Docs"), Some(&"docs"));
        assert_eq!(r.lookup("/adm"), Some(&"web"));
        assert_eq!(
            r.lookup("/é"),
            Some(&"web"),
            "no slicing inside a character"
        );
    }
}

/// A path porteiro refuses (400): backends disagree on what it means, so any route decision
/// made on it could be undone by the backend.
#[derive(Debug, PartialEq, Eq)]
pub struct AmbiguousPath;

/// The path a request is routed by: percent-encoded unreserved characters decoded (RFC 3986
/// 6.2.2.2, so `/%61dmin` is `/admin`), dot segments resolved as 5.2.4 does and repeated
/// slashes merged, so `/api/../admin` is routed (and forwarded) as `/admin`, the path a backend
/// would serve. `Ok(None)` when nothing changes, the common case, which allocates nothing.
///
/// Refused: a backslash or `%5C` (a slash to some servers), `%00`, and a dot segment carrying
/// parameters (`..;/`, which Java servers read as `..`). An encoded slash (`%2F`) stays
/// encoded and is not a separator: APIs use it inside identifiers.
pub fn normalize_path(path: &str) -> Result<Option<String>, AmbiguousPath> {
    if path.contains('\\') {
        return Err(AmbiguousPath);
    }
    let decoded = decode_unreserved(path)?;
    let text = decoded.as_deref().unwrap_or(path);
    let mut suspicious = text.contains("//");
    for seg in text.split('/') {
        if seg.starts_with(".;") || seg.starts_with("..;") {
            return Err(AmbiguousPath);
        }
        suspicious |= seg == "." || seg == "..";
    }
    if !suspicious {
        return Ok(decoded);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = text.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | "" => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(text.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    Ok((normal != path).then_some(normal))
}

/// The path to route by, when it differs from the normalised path: every remaining escape
/// decoded once, as most backends do before they route, so `/api%2Fadmin` meets an
/// `/api/admin` route and `/a%3Ab` an `/a:b` one. The request is still forwarded with its
/// escapes (APIs use `%2F` inside identifiers). `sent` is the path before normalisation:
/// where an encoded slash would form an empty or dot segment once decoded (`/a%2F..%2Fb`,
/// `/%2Fadmin`, `/a%2Fb/..`), backends disagree on what the path means, and it is refused.
pub fn routing_view(sent: &str, normal: &str) -> Result<Option<String>, AmbiguousPath> {
    if !sent.contains('%') {
        return Ok(None);
    }
    let has_encoded_slash = |p: &str| {
        p.as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && matches!(w[2], b'f' | b'F'))
    };
    if has_encoded_slash(sent) && has_odd_segment(&decode_all(sent)) {
        return Err(AmbiguousPath);
    }
    if !normal.contains('%') {
        return Ok(None);
    }
    let view = decode_all(normal);
    if has_odd_segment(&view) {
        return Err(AmbiguousPath);
    }
    Ok((view != normal).then_some(view))
}

/// Every `%XX` escape decoded once. Route prefixes are ASCII, so a byte that is not valid
/// UTF-8 once decoded can never be part of a match.
fn decode_all(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = escaped_byte(bytes, i);
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `.` or `..` segment, or an empty one other than a trailing slash.
fn has_odd_segment(path: &str) -> bool {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    segments
        .iter()
        .enumerate()
        .any(|(n, seg)| matches!(*seg, "." | "..") || (seg.is_empty() && n != last))
}

/// `;` parameters in a path segment (`/a;jsessionid=1`): Java servers strip them before they
/// route, so `/;/admin` reaches their `/admin`.
pub fn has_path_parameters(path: &str) -> bool {
    path.contains(';')
}

/// The byte a `%XX` escape at `bytes[i]` stands for; `None` when there is none.
pub fn escaped_byte(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = bytes
        .get(i + 1..i + 3)
        .filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit))?;
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// `%XX` escapes of unreserved characters replaced by the character; other escapes kept as
/// sent. `None` when there is nothing to decode.
fn decode_unreserved(path: &str) -> Result<Option<String>, AmbiguousPath> {
    if !path.contains('%') {
        return Ok(None);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut changed = false;
    let mut i = 0;
    while i < bytes.len() {
        let escaped = escaped_byte(bytes, i);
        match escaped {
            Some(0) | Some(b'\\') => return Err(AmbiguousPath),
            Some(b) if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                out.push(b as char);
                changed = true;
                i += 3;
            }
            _ => {
                // Up to the next '%' (ASCII, so a char boundary): UTF-8 stays whole. `i` may
                // start a multi-byte character, so search bytes, not `path[i + 1..]`.
                let next = memchr::memchr(b'%', &bytes[i + 1..]).map_or(bytes.len(), |n| i + 1 + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(changed.then_some(out))
}

#[cfg(test)]
mod normalize_tests {
    use super::{has_path_parameters, normalize_path, routing_view, AmbiguousPath};

    fn norm(p: &str) -> Option<String> {
        normalize_path(p).expect("accepted")
    }

    #[test]
    fn dot_segments_and_double_slashes() {
        assert_eq!(norm("/api/users"), None);
        assert_eq!(norm("/"), None);
        assert_eq!(norm("/api/../admin").as_deref(), Some("/admin"));
        assert_eq!(norm("/api/%2e%2E/admin").as_deref(), Some("/admin"));
        assert_eq!(norm("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(norm("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(norm("//api//x").as_deref(), Some("/api/x"));
        assert_eq!(norm("/a/..").as_deref(), Some("/"));
        assert_eq!(norm("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(norm("/a..b/.c"), None);
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        assert_eq!(norm("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(norm("/%7Euser/%41").as_deref(), Some("/~user/A"));
        assert_eq!(norm("/a%2Fb"), None, "an encoded slash is data");
        assert_eq!(norm("/a%20b%"), None);
        assert_eq!(norm("/%+2/%2g"), None, "an escape is two hex digits");
        assert_eq!(norm("/caf%C3%A9/%61").as_deref(), Some("/caf%C3%A9/a"));
        assert_eq!(norm("/é/%2e%2e/x").as_deref(), Some("/x"));
        assert_eq!(
            norm("/%7Eé%2Fb").as_deref(),
            Some("/~é%2Fb"),
            "no panic mid-character"
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/a\\..\\admin",
            "/a%5cadmin",
            "/a%5Cadmin",
            "/a%00",
            "/api/..;/admin",
            "/api/.;x/admin",
            "/api/%2e%2e;/admin",
        ] {
            assert_eq!(normalize_path(p), Err(AmbiguousPath), "{p}");
        }
        assert_eq!(
            norm("/a;b/c;d=1"),
            None,
            "parameters on other segments are fine"
        );
    }

    #[test]
    fn escapes_are_decoded_once_for_routing() {
        assert_eq!(routing_view("/api/users", "/api/users"), Ok(None));
        assert_eq!(
            routing_view("/a%20b", "/a%20b").unwrap().as_deref(),
            Some("/a b")
        );
        assert_eq!(
            routing_view("/a%3Ab", "/a%3Ab").unwrap().as_deref(),
            Some("/a:b")
        );
        assert_eq!(routing_view("/a%zz", "/a%zz"), Ok(None));
        assert_eq!(
            routing_view("/api%2Fadmin", "/api%2Fadmin")
                .unwrap()
                .as_deref(),
            Some("/api/admin")
        );
        assert_eq!(
            routing_view("/projects/g%2fr/x", "/projects/g%2fr/x")
                .unwrap()
                .as_deref(),
            Some("/projects/g/r/x")
        );
        assert_eq!(
            routing_view("/a%2F", "/a%2F").unwrap().as_deref(),
            Some("/a/")
        );
        for p in [
            "/%2Fadmin",
            "/a%2F%2Fb",
            "/x%2F..%2Fadmin",
            "/x%2F.",
            "/a/%2F",
        ] {
            assert_eq!(routing_view(p, p), Err(AmbiguousPath), "{p}");
        }
    }

    #[test]
    fn parameters_are_seen_in_any_segment() {
        assert!(has_path_parameters("/;/admin"));
        assert!(has_path_parameters("/a;x/b"));
        assert!(!has_path_parameters("/a%3Bx"));
    }
}

//! Hostname -> tenant lookup. Exact names live in one hash map; wildcards in another keyed by
//! their suffix. A lookup costs one exact probe plus one probe per dot in the name, whatever the
//! number of tenants: the longest wildcard suffix is simply the first one found from the left.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::model::HostPattern;

/// Maps normalised hostnames to a value (a tenant index in a snapshot).
#[derive(Debug, Default, Clone)]
pub struct HostTable<T> {
    exact: HashMap<Box<str>, T>,
    wildcard: HashMap<Box<str>, T>,
}

impl<T> HostTable<T> {
    pub fn new() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }

    pub fn with_capacity(exact: usize, wildcard: usize) -> Self {
        Self {
            exact: HashMap::with_capacity(exact),
            wildcard: HashMap::with_capacity(wildcard),
        }
    }

    /// Adds a pattern; returns the previous value if the pattern was already present.
    /// Validation rejects duplicates before a table is built, so a `Some` here is a bug upstream.
    pub fn insert(&mut self, pattern: &HostPattern, value: T) -> Option<T> {
        match pattern {
            HostPattern::Exact(name) => self.exact.insert(name.as_str().into(), value),
            HostPattern::Wildcard(suffix) => self.wildcard.insert(suffix.as_str().into(), value),
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the value for a Host header or `:authority` as the client sent it.
    pub fn lookup(&self, raw_host: &str) -> Option<&T> {
        let host = normalize_host(raw_host)?;
        if let Some(v) = self.exact.get(host.as_ref()) {
            return Some(v);
        }
        // Walk suffixes from the longest: for a.b.example.com try b.example.com, example.com, com.
        let mut rest: &str = &host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(v) = self.wildcard.get(rest) {
                return Some(v);
            }
        }
        None
    }
}

/// Lowercases and strips the port and a trailing dot. Borrows when nothing needs changing,
/// which is the common case, so the request path does not allocate.
/// Returns `None` for an empty host or one that is malformed (bad IPv6 literal, bad characters).
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let without_port = strip_port(raw)?;
    let name = without_port.strip_suffix('.').unwrap_or(without_port);
    // `a..` is `a.` once its root dot goes: an empty last label, no host.
    if name.is_empty() || name.len() > 253 || name.ends_with('.') {
        return None;
    }
    if let Some(literal) = name.strip_prefix('[') {
        // An IPv6 literal, and nothing else, may carry colons and brackets.
        let inner = literal.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(match name.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(name.to_ascii_lowercase()),
            false => Cow::Borrowed(name),
        });
    }
    let mut needs_lowercase = false;
    // Starts as if after a dot: an empty label (`.a.com`, `x..a.com`) names no host, and
    // would otherwise match a wildcard.
    let mut prev = b'.';
    for b in name.bytes() {
        match b {
            b'.' if prev == b'.' => return None,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {}
            b'A'..=b'Z' => needs_lowercase = true,
            _ => return None,
        }
        prev = b;
    }
    Some(if needs_lowercase {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// `example.com:8080` -> `example.com`; `[::1]:8080` -> `[::1]`; `[::1]` stays.
fn strip_port(raw: &str) -> Option<&str> {
    if raw.starts_with('[') {
        let end = raw.find(']')?;
        let after = &raw[end + 1..];
        if after.is_empty() || is_port_suffix(after) {
            return Some(&raw[..=end]);
        }
        return None;
    }
    match raw.rfind(':') {
        Some(colon) if is_port_suffix(&raw[colon..]) => Some(&raw[..colon]),
        Some(_) => None,
        None => Some(raw),
    }
}

fn is_port_suffix(s: &str) -> bool {
    s.len() > 1 && s.len() <= 6 && s.starts_with(':') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> HostTable<&'static str> {
        let mut t = HostTable::new();
        t.insert(&HostPattern::Exact("acme.example.com".into()), "acme-exact");
        t.insert(
            &HostPattern::Wildcard("acme.example.com".into()),
            "acme-wild",
        );
        t.insert(&HostPattern::Wildcard("example.com".into()), "catch-all");
        t.insert(&HostPattern::Exact("api.acme.example.com".into()), "api");
        t
    }

    #[test]
    fn exact_beats_wildcard_and_longest_suffix_wins() {
        let t = table();
        assert_eq!(t.lookup("acme.example.com"), Some(&"acme-exact"));
        assert_eq!(t.lookup("api.acme.example.com"), Some(&"api"));
        assert_eq!(t.lookup("www.acme.example.com"), Some(&"acme-wild"));
        assert_eq!(t.lookup("a.b.acme.example.com"), Some(&"acme-wild"));
        assert_eq!(t.lookup("other.example.com"), Some(&"catch-all"));
    }

    #[test]
    fn wildcard_does_not_match_its_bare_suffix() {
        let t = table();
        assert_eq!(t.lookup("example.com"), None);
        assert_eq!(t.lookup("example.org"), None);
    }

    #[test]
    fn case_port_and_trailing_dot_are_ignored() {
        let t = table();
        assert_eq!(t.lookup("ACME.Example.COM"), Some(&"acme-exact"));
        assert_eq!(t.lookup("acme.example.com:8443"), Some(&"acme-exact"));
        assert_eq!(t.lookup("acme.example.com."), Some(&"acme-exact"));
        assert_eq!(t.lookup("WWW.acme.example.com.:80"), Some(&"acme-wild"));
    }

    #[test]
    fn malformed_hosts_match_nothing() {
        let t = table();
        for bad in [
            "",
            ":80",
            "acme.example.com:http",
            "a b.example.com",
            "acme.example.com/x",
            ".",
            ".acme.example.com",
            "x..acme.example.com",
            "www.acme.example.com..",
        ] {
            assert_eq!(t.lookup(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn normalize_borrows_when_already_normal() {
        assert!(matches!(
            normalize_host("acme.example.com:80"),
            Some(Cow::Borrowed("acme.example.com"))
        ));
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("[::1").as_deref(), None);
        assert_eq!(normalize_host("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
    }
}

//! Names porteiro checks: hostnames and host patterns, tenant and pool ids.

use super::model::HostPattern;

/// Tenant ids and pool names: `[a-z0-9][a-z0-9_-]{0,62}`. They appear in headers and labels.
pub fn check_id(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name: use 1-63 of a-z 0-9 _ -, starting with a letter or digit"
        ))
    }
}

/// `acme.example.com` or `*.acme.example.com`; lowercased, one trailing dot dropped.
pub fn parse_host_pattern(raw: &str) -> Result<HostPattern, String> {
    // Only one dot: `a.b.` is the same name as `a.b`, but `a.b..` is a typo.
    let lower = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if lower.contains(':') && !lower.starts_with('[') {
        return Err(format!(
            "`{raw}`: hosts carry no port (porteiro ignores the port when matching)"
        ));
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        check_hostname(suffix).map_err(|r| format!("`{raw}`: {r}"))?;
        return Ok(HostPattern::Wildcard(suffix.to_string()));
    }
    if lower.contains('*') {
        return Err(format!(
            "`{raw}`: a wildcard may only be a leading `*.`, as in `*.example.com`"
        ));
    }
    check_hostname(&lower).map_err(|r| format!("`{raw}`: {r}"))?;
    Ok(HostPattern::Exact(lower))
}

fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty hostname".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every label must have 1 to 63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("`{c}` is not allowed in a hostname"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(
            parse_host_pattern("Acme.Example.com."),
            Ok(HostPattern::Exact("acme.example.com".into()))
        );
        assert_eq!(
            parse_host_pattern("*.acme.example.com"),
            Ok(HostPattern::Wildcard("acme.example.com".into()))
        );
        assert_eq!(
            parse_host_pattern("127.0.0.1"),
            Ok(HostPattern::Exact("127.0.0.1".into()))
        );
        assert_eq!(
            parse_host_pattern("*.A.test."),
            Ok(HostPattern::Wildcard("a.test".into()))
        );
        // 253 characters is the longest name DNS allows.
        assert!(parse_host_pattern(&["a"; 127].join(".")).is_ok());
        assert!(parse_host_pattern("a.test:8080")
            .unwrap_err()
            .contains("hosts carry no port"));
        for bad in [
            "",
            "*",
            "*.",
            "a.*.example.com",
            "*example.com",
            "acme.example.com:80",
            "a..b",
            "-a.b",
            "a b.c",
            "**.a.b",
            "a.b..",
            ".",
            "*.a.b:80",
            "[::1]",
            "caf\u{e9}.test",
            &format!("{}.test", "a".repeat(64)),
            &["a"; 128].join("."),
        ] {
            assert!(
                parse_host_pattern(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn ids() {
        assert!(check_id("acme-1_x").is_ok());
        for bad in ["", "Acme", "-acme", "a.b", &"a".repeat(64)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}

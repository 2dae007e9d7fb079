//! `[server]` keys that bound what a client connection may hold: how long its request head,
//! body and idle time may take, how slowly it may read, how large its head may be, and how
//! many connections a listener and one client address may have open.

use super::error::ConfigErrors;
use super::fields::Fields;
use super::model::ClientLimits;

/// pingora reads at most 1 MiB of request head.
const HEAD_CEILING: u64 = 1024 * 1024 - 1;

pub fn parse(f: &Fields, errs: &mut ConfigErrors) -> ClientLimits {
    let mut c = ClientLimits::default();
    let durations = [
        ("header_timeout", &mut c.header_timeout),
        ("keepalive_timeout", &mut c.keepalive_timeout),
        ("body_timeout", &mut c.body_timeout),
        ("send_timeout", &mut c.send_timeout),
    ];
    for (key, slot) in durations {
        if let Some(d) = f.duration(key, errs) {
            // pingora's keep-alive timer counts whole seconds: below one it would mean "none".
            if d.as_millis() < 1000 || d.as_secs() > 3600 {
                errs.push(f.file, f.path(key), "expected 1s to 1h");
            } else {
                *slot = d;
            }
        }
    }
    if let Some(n) = f.int("max_connections", 1..=10_000_000, errs) {
        c.max_connections = n as u32;
    }
    if let Some(n) = f.int("max_connections_per_ip", 1..=10_000_000, errs) {
        c.max_connections_per_ip = n as u32;
    }
    if let Some(n) = f.int("client_ipv6_prefix", 32..=128, errs) {
        c.client_ipv6_prefix = n as u8;
    }
    if let Some(n) = f.size("max_request_line", 256..=HEAD_CEILING, errs) {
        c.max_request_line = n as u32;
    }
    if let Some(n) = f.size("max_header_bytes", 1024..=HEAD_CEILING, errs) {
        c.max_header_bytes = n as u32;
    }
    if let Some(b) = f.bool("drop_underscore_headers", errs) {
        c.drop_underscore_headers = b;
    }
    if c.max_request_line > c.max_header_bytes {
        errs.push(
            f.file,
            f.path("max_request_line"),
            "cannot be larger than max_header_bytes (the request line is part of the head)",
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::server::SERVER_KEYS;
    use super::*;

    fn parse_str(text: &str) -> (ClientLimits, ConfigErrors) {
        let mut errs = ConfigErrors::default();
        let table: toml::Table = toml::from_str(text).unwrap();
        let f = Fields::new(Path::new("main.toml"), "server", &table, SERVER_KEYS);
        let c = parse(&f, &mut errs);
        f.finish(&mut errs);
        (c, errs)
    }

    #[test]
    fn defaults_and_every_key() {
        let (c, errs) = parse_str("");
        assert!(errs.is_empty());
        assert_eq!(c, ClientLimits::default());
        let (c, errs) = parse_str(
            "header_timeout = \"5s\"\nkeepalive_timeout = \"2m\"\nbody_timeout = \"20s\"\n\
             send_timeout = \"1m\"\nmax_connections = 100\nmax_connections_per_ip = 10\n\
             max_request_line = \"4KiB\"\nmax_header_bytes = \"16KiB\"\ndrop_underscore_headers = true\n\
             client_ipv6_prefix = 56\n",
        );
        assert!(errs.is_empty(), "{errs}");
        assert_eq!(c.header_timeout, Duration::from_secs(5));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(120));
        assert_eq!((c.max_connections, c.max_connections_per_ip), (100, 10));
        assert_eq!((c.max_request_line, c.max_header_bytes), (4096, 16384));
        assert!(c.drop_underscore_headers);
        assert_eq!(c.client_ipv6_prefix, 56);
    }

    #[test]
    fn bad_values_name_their_key() {
        let (_, errs) = parse_str(
            "header_timeout = \"500ms\"\nmax_connections = 0\nmax_header_bytes = \"2MiB\"\n\
             max_request_line = \"nope\"\nclient_ipv6_prefix = 16\n",
        );
        let keys: Vec<&str> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.header_timeout",
                "server.max_connections",
                "server.client_ipv6_prefix",
                "server.max_request_line",
                "server.max_header_bytes"
            ]
        );
        let (_, errs) = parse_str("max_request_line = \"32KiB\"\nmax_header_bytes = \"16KiB\"\n");
        assert_eq!(errs.0[0].key, "server.max_request_line");
    }
}

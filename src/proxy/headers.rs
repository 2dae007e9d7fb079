//! Headers porteiro vouches for on the way to the backend: the tenant id, the forwarding
//! chain and the request id. Whatever a client sends under these names is replaced unless the
//! client is a trusted proxy, so backends can rely on them.

use std::net::IpAddr;

use http::header::HOST;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

pub const X_TENANT_ID: &str = "x-tenant-id";
pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED: &str = "forwarded";

// The same names prepared for insertion: the vendored pingora-http neither parses a prepared
// name nor allocates it for its maps' keys; a `&str` name is parsed and allocated twice.
pub const TENANT_ID: HeaderName = HeaderName::from_static(X_TENANT_ID);
pub const REQUEST_ID: HeaderName = HeaderName::from_static(X_REQUEST_ID);
const FORWARDED_FOR: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
const FORWARDED_PROTO: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO);
const FORWARDED_HOST: HeaderName = HeaderName::from_static(X_FORWARDED_HOST);
/// At most this many headers are added by `apply`: the five names above and `Host`.
const ADDED: usize = 6;

/// The client behind the peer: the peer itself unless it is a trusted proxy (`trusted_peer`),
/// then the address the forwarding chain vouches for (`limits::client_ip`).
pub fn client_ip(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    trusted_peer: bool,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    if !trusted_peer {
        return peer;
    }
    crate::limits::client_ip(peer, forwarded_for(req), trusted)
}

/// The `X-Forwarded-For` values a trusted proxy sent, in order; values that are not text are
/// skipped, the same way for the client address and for the chain passed on.
fn forwarded_for(req: &RequestHeader) -> impl DoubleEndedIterator<Item = &str> {
    req.headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// What the proxy knows about the request that the backend should be told.
pub struct Forwarding<'a> {
    /// The socket peer: the address this hop appends to `X-Forwarded-For`.
    pub peer_ip: Option<IpAddr>,
    /// The peer is inside `trusted_proxies`: its forwarding headers are extended, not replaced.
    pub trusted_peer: bool,
    pub proto: &'static str,
    /// The host the client asked for, as sent (with port, if any).
    pub host: &'a str,
    pub tenant_id: &'a HeaderValue,
    pub request_id: &'a HeaderValue,
    pub host_rewrite: Option<&'a HeaderValue>,
    /// `[server] drop_underscore_headers`: drop every client header with `_` in its name.
    pub drop_underscore: bool,
}

pub fn apply(req: &mut RequestHeader, f: &Forwarding) -> pingora::Result<()> {
    // One pass over the names the client sent finds what must go. Requests rarely carry any of
    // them, and probing each of the ~25 names by hash cost more than all of porteiro's routing.
    for name in doomed(req, f) {
        req.remove_header(&name);
    }
    // Room for every header added, made once: otherwise both of pingora's header maps grow
    // (and rehash) as the headers go in.
    req.reserve_headers(ADDED)?;
    req.insert_header(TENANT_ID, f.tenant_id.clone())?;
    req.insert_header(REQUEST_ID, f.request_id.clone())?;

    let prior = if f.trusted_peer {
        joined_chain(req)
    } else {
        None
    };
    let xff = match (prior, f.peer_ip) {
        (Some(mut chain), Some(ip)) => {
            // Appended to the chain already built, without a second string.
            chain.push_str(", ");
            match ip {
                IpAddr::V4(v4) => {
                    let (buf, len) = crate::text::ipv4(v4);
                    chain.extend(buf[..len].iter().map(|&b| char::from(b)));
                }
                IpAddr::V6(v6) => {
                    use std::fmt::Write as _;
                    let _ = write!(chain, "{v6}");
                }
            }
            HeaderValue::try_from(chain).ok()
        }
        (Some(chain), None) => HeaderValue::try_from(chain).ok(),
        (None, Some(ip)) => Some(ip_value(ip)),
        (None, None) => None,
    };
    match xff {
        Some(v) => req.insert_header(FORWARDED_FOR, v)?,
        None => drop(req.remove_header(X_FORWARDED_FOR)),
    }
    if !(f.trusted_peer && req.headers.contains_key(X_FORWARDED_PROTO)) {
        req.insert_header(FORWARDED_PROTO, HeaderValue::from_static(f.proto))?;
    }
    // The Host header as sent is usually the host routed by: its value is shared, not copied.
    let mut sent = req.headers.get_all(HOST).iter();
    let sent_host = match (sent.next(), sent.next()) {
        (Some(v), None) if v.as_bytes() == f.host.as_bytes() => Some(v.clone()),
        _ => None,
    };
    let host_as_sent = sent_host.is_some();
    let host = match sent_host {
        Some(v) => Some(v),
        None if f.host.is_empty() => None,
        None => Some(HeaderValue::from_str(f.host).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "invalid host")
        })?),
    };
    if !(f.trusted_peer && req.headers.contains_key(X_FORWARDED_HOST)) {
        match &host {
            Some(v) => req.insert_header(FORWARDED_HOST, v.clone())?,
            None => drop(req.remove_header(X_FORWARDED_HOST)),
        }
    }
    // Exactly one Host, the one porteiro routed by: a client's absolute-form URI with another
    // Host header must not reach the backend as the other tenant's host. (An HTTP/2 client
    // sends :authority and no Host; an HTTP/1.1 backend needs Host.)
    if let Some(rewrite) = f.host_rewrite {
        req.insert_header(HOST, rewrite.clone())?;
    } else if let (Some(v), false) = (host, host_as_sent) {
        req.insert_header(HOST, v)?;
    }
    Ok(())
}

/// The client's headers that must not reach the backend: RFC 7239 `Forwarded` (porteiro does
/// not write it, so an untrusted client's must not reach a backend that might believe it) and
/// `UNVOUCHED` from anyone but a trusted proxy, and underscore twins (`is_twin_of_ours`).
fn doomed(req: &RequestHeader, f: &Forwarding) -> Vec<http::HeaderName> {
    req.headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            let unvouched = name == FORWARDED || UNVOUCHED.contains(&name);
            (unvouched && !f.trusted_peer)
                || (name.contains('_') && (f.drop_underscore || is_twin_of_ours(name)))
        })
        .cloned()
        .collect()
}

/// `X-Forwarded-For` for one address. IPv4, the common case, is written by hand: the
/// formatting machinery cost more than the rest of this header's work.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static(""));
    };
    let (buf, len) = crate::text::ipv4(v4);
    // Digits and dots are always a valid header value.
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
}

/// Headers some backends believe (client address, scheme, port, prefix, a rewritten URL)
/// that porteiro does not write: from anyone but a trusted proxy they are removed.
const UNVOUCHED: &[&str] = &[
    "x-real-ip",
    "x-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "front-end-https",
    "x-url-scheme",
    "x-original-url",
    "x-rewrite-url",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "forwarded-for",
    "x-forwarded",
];

/// Headers porteiro writes itself (besides `UNVOUCHED`, which it removes).
const VOUCHED: &[&str] = &[
    X_TENANT_ID,
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    FORWARDED,
    "host",
];

/// CGI, WSGI and Rack servers read `X_Tenant_Id` and `X-Tenant-Id` as one variable
/// (`HTTP_X_TENANT_ID`), so a client's underscore twin of a header porteiro sets or vouches
/// for could stand in for it. Such twins are dropped; with `drop_underscore`, every name with
/// `_` is.
fn is_twin_of_ours(name: &str) -> bool {
    let same = |ours: &&str| {
        ours.len() == name.len()
            && ours
                .bytes()
                .zip(name.bytes())
                .all(|(o, n)| o == n || (o == b'-' && n == b'_'))
    };
    VOUCHED.iter().any(same) || UNVOUCHED.iter().any(same)
}

/// Content-Length values that disagree or are not a number.
#[derive(Debug, PartialEq, Eq)]
pub struct BadContentLength;

/// Repeated or list-form Content-Length (`5, 5`, two `5` lines, `0005`) becomes one
/// canonical value, since a strict backend refuses the others; values that disagree, or are
/// not digits, are an error (the request cannot be framed safely).
pub fn canonical_content_length(req: &mut RequestHeader) -> Result<(), BadContentLength> {
    let mut values = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    let simple = |v: &HeaderValue| {
        let b = v.as_bytes();
        !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1)
    };
    if simple(first) && values.next().is_none() {
        return Ok(());
    }
    let mut length: Option<u64> = None;
    for v in req.headers.get_all(http::header::CONTENT_LENGTH) {
        for item in v.to_str().map_err(|_| BadContentLength)?.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadContentLength);
            }
            let n: u64 = item.parse().map_err(|_| BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(BadContentLength);
            }
            length = Some(n);
        }
    }
    let n = length.ok_or(BadContentLength)?;
    req.insert_header(http::header::CONTENT_LENGTH, n)
        .map_err(|_| BadContentLength)
}

/// At most one Host header (RFC 9112 3.2: more than one is a 400).
pub fn single_host(req: &RequestHeader) -> bool {
    req.headers.get_all(HOST).iter().nth(1).is_none()
}

/// The forwarding chain so far: every `X-Forwarded-For` value, joined by ", " as RFC 9110
/// allows.
fn joined_chain(req: &RequestHeader) -> Option<String> {
    let mut out: Option<String> = None;
    for v in forwarded_for(req).map(str::trim).filter(|v| !v.is_empty()) {
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

/// The client's `X-Request-Id` if it is sane (1..=128 of `[A-Za-z0-9._:+/=-]`), else a new
/// random 128-bit id in hex. Anything else could smuggle junk into every backend's logs.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(X_REQUEST_ID) {
        if is_sane_request_id(v.as_bytes()) {
            return v.clone();
        }
    }
    new_request_id()
}

pub fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+/=-".contains(b))
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (chunk, word) in buf
        .chunks_mut(16)
        .zip([fastrand::u64(..), fastrand::u64(..)])
    {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = HEX[((word >> (i * 4)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// The host a request is for: the URI authority (HTTP/2 `:authority`, HTTP/1.1 absolute form)
/// wins over the Host header, as RFC 9110 7.2 says.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    if let Some(authority) = req.uri.authority() {
        return Some(authority.as_str());
    }
    req.headers.get(HOST).and_then(|h| h.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn forward(r: &mut RequestHeader, trusted: bool) {
        forward_with(r, trusted, false);
    }

    fn forward_with(r: &mut RequestHeader, trusted: bool, drop_underscore: bool) {
        let tenant = HeaderValue::from_static("acme");
        let rid = HeaderValue::from_static("rid-1");
        apply(
            r,
            &Forwarding {
                peer_ip: Some("192.0.2.7".parse().unwrap()),
                trusted_peer: trusted,
                proto: "http",
                host: "acme.example.com",
                tenant_id: &tenant,
                request_id: &rid,
                host_rewrite: None,
                drop_underscore,
            },
        )
        .unwrap();
    }

    fn get<'a>(r: &'a RequestHeader, n: &str) -> Vec<&'a str> {
        r.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn untrusted_clients_cannot_set_what_porteiro_vouches_for() {
        let mut r = req(&[
            ("X-Tenant-Id", "other"),
            ("x-tenant-id", "other2"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6;proto=https"),
            ("Host", "acme.example.com"),
        ]);
        forward(&mut r, false);
        assert!(get(&r, "forwarded").is_empty());
        assert_eq!(get(&r, "x-tenant-id"), vec!["acme"]);
        assert_eq!(get(&r, "x-forwarded-for"), vec!["192.0.2.7"]);
        assert_eq!(get(&r, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(get(&r, "x-forwarded-host"), vec!["acme.example.com"]);
        assert_eq!(get(&r, "x-request-id"), vec!["rid-1"]);
        assert_eq!(get(&r, "host"), vec!["acme.example.com"]);
    }

    #[test]
    fn headers_porteiro_does_not_write_are_dropped_unless_trusted() {
        let sent = [
            ("X-Real-IP", "6.6.6.6"),
            ("X-Original-URL", "/admin"),
            ("X-Forwarded-Port", "443"),
            ("Host", "other.example.com"),
            ("Host", "third.example.com"),
        ];
        let mut r = req(&sent);
        forward(&mut r, false);
        for name in ["x-real-ip", "x-original-url", "x-forwarded-port"] {
            assert!(get(&r, name).is_empty(), "{name} passed through");
        }
        assert_eq!(
            get(&r, "host"),
            vec!["acme.example.com"],
            "the routed host only"
        );
        let mut r = req(&sent);
        forward(&mut r, true);
        assert_eq!(get(&r, "x-real-ip"), vec!["6.6.6.6"]);
        assert!(!single_host(&req(&sent)));
        assert!(single_host(&req(&sent[..3])));
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let mut r = req(&[
            ("X-Forwarded-For", "203.0.113.1"),
            ("X-Forwarded-For", "198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Tenant-Id", "other"),
        ]);
        forward(&mut r, true);
        assert_eq!(
            get(&r, "x-forwarded-for"),
            vec!["203.0.113.1, 198.51.100.2, 192.0.2.7"]
        );
        assert_eq!(get(&r, "x-forwarded-proto"), vec!["https"]);
        assert_eq!(
            get(&r, "x-tenant-id"),
            vec!["acme"],
            "tenant id is never trusted"
        );
        assert_eq!(
            get(&r, "host"),
            vec!["acme.example.com"],
            "h2 requests get a Host"
        );
    }

    #[test]
    fn a_forwarded_for_value_that_is_not_text_is_skipped_alike_for_the_chain_and_the_client() {
        let trusted: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap()];
        let mut r = req(&[("X-Forwarded-For", "203.0.113.1")]);
        r.append_header("X-Forwarded-For", HeaderValue::from_bytes(b"\xff").unwrap())
            .unwrap();
        r.append_header("X-Forwarded-For", "198.51.100.2").unwrap();
        let peer = Some("192.0.2.7".parse().unwrap());
        assert_eq!(
            client_ip(&r, peer, true, &trusted),
            Some("198.51.100.2".parse().unwrap())
        );
        forward(&mut r, true);
        assert_eq!(
            get(&r, "x-forwarded-for"),
            vec!["203.0.113.1, 198.51.100.2, 192.0.2.7"]
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert_eq!(request_id(&req(&[("X-Request-Id", "abc-123")])), "abc-123");
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let id = request_id(&req(&[("X-Request-Id", bad)]));
            assert_eq!(id.len(), 32, "{bad:?} should be replaced");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
        assert_ne!(request_id(&req(&[])), request_id(&req(&[])));
    }

    #[test]
    fn authority_wins_over_host() {
        let r = req(&[("Host", "a.example.com")]);
        assert_eq!(request_host(&r), Some("a.example.com"));
        let mut r = req(&[("Host", "a.example.com")]);
        r.set_uri("http://b.example.com/x".parse().unwrap());
        assert_eq!(request_host(&r), Some("b.example.com"));
    }

    #[test]
    fn underscore_twins_of_our_headers_are_dropped() {
        let mut r = req(&[
            ("X_Tenant_Id", "evil"),
            ("x_forwarded_for", "6.6.6.6"),
            ("X_Real_IP", "6.6.6.6"),
            ("True-Client-IP", "6.6.6.6"),
            ("CF-Connecting-IP", "6.6.6.6"),
            ("X-Cluster-Client-IP", "6.6.6.6"),
            ("Forwarded-For", "6.6.6.6"),
            ("X-Forwarded", "for=6.6.6.6"),
            ("my_app_header", "kept"),
        ]);
        forward(&mut r, false);
        for gone in [
            "x_tenant_id",
            "x_forwarded_for",
            "x_real_ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "forwarded-for",
            "x-forwarded",
        ] {
            assert!(get(&r, gone).is_empty(), "{gone} reached the backend");
        }
        assert_eq!(get(&r, "x-tenant-id"), vec!["acme"]);
        assert_eq!(get(&r, "my_app_header"), vec!["kept"]);
        // A trusted proxy's twins go too: porteiro never vouches for an underscore name.
        let mut r = req(&[("X_Tenant_Id", "evil")]);
        forward(&mut r, true);
        assert!(get(&r, "x_tenant_id").is_empty());
        let mut r = req(&[("my_app_header", "x")]);
        forward_with(&mut r, false, true);
        assert!(
            get(&r, "my_app_header").is_empty(),
            "the broad rule drops all"
        );
    }

    #[test]
    fn ipv4_addresses_are_written_as_the_standard_library_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "192.0.2.7",
            "255.255.255.255",
            "10.0.100.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn exactly_one_host_the_routed_one_reaches_the_backend() {
        // Sent as routed: kept, and X-Forwarded-Host says the same.
        let mut r = req(&[("Host", "acme.example.com")]);
        forward(&mut r, false);
        assert_eq!(get(&r, "host"), vec!["acme.example.com"]);
        assert_eq!(get(&r, "x-forwarded-host"), vec!["acme.example.com"]);
        // Another Host than the one routed by (absolute form): replaced.
        let mut r = req(&[("Host", "other.example.com")]);
        forward(&mut r, false);
        assert_eq!(get(&r, "host"), vec!["acme.example.com"]);
        assert_eq!(get(&r, "x-forwarded-host"), vec!["acme.example.com"]);
        // Twins, even if one is the routed host, become one.
        let mut r = req(&[("Host", "acme.example.com"), ("Host", "acme.example.com")]);
        forward(&mut r, false);
        assert_eq!(get(&r, "host"), vec!["acme.example.com"]);
    }

    #[test]
    fn content_length_is_forwarded_once_and_canonical() {
        for sent in [
            &[("Content-Length", "5"), ("Content-Length", "5")][..],
            &[("Content-Length", "5, 5")],
            &[("Content-Length", "0005")],
        ] {
            let mut r = req(sent);
            assert_eq!(canonical_content_length(&mut r), Ok(()));
            assert_eq!(get(&r, "content-length"), vec!["5"], "{sent:?}");
        }
        let mut r = req(&[("Content-Length", "0")]);
        assert_eq!(canonical_content_length(&mut r), Ok(()));
        assert_eq!(get(&r, "content-length"), vec!["0"]);
        for bad in [
            &[("Content-Length", "5"), ("Content-Length", "6")][..],
            &[("Content-Length", "5, 6")],
            &[("Content-Length", "+5")],
            &[("Content-Length", "5,")],
            &[("Content-Length", "")],
        ] {
            assert_eq!(
                canonical_content_length(&mut req(bad)),
                Err(BadContentLength),
                "{bad:?}"
            );
        }
    }
}

//! What TLS changes about a request before it is routed: the SNI/Host consistency check
//! (no domain fronting between tenants) and the redirect of plain HTTP to https.

/// The decision for a request whose tenant is known.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    Pass,
    /// The TLS connection was set up for another tenant's name: 421, never forwarded.
    Misdirected,
    /// Plain HTTP to a tenant that wants https: 308 to this URL.
    Redirect(String),
}

/// The facts about the request's connection that matter here.
pub struct Connection<'a> {
    pub tls: bool,
    /// For TLS connections that sent SNI: the tenant that name belongs to (`None`: nobody's).
    pub sni_tenant: Option<Option<u32>>,
    /// `Host` (or `:authority`) as sent, possibly with a port.
    pub host: &'a str,
    pub path_and_query: &'a str,
    /// The path as routed (dot segments resolved): what the ACME exemption is decided on, so
    /// `/.well-known/acme-challenge/../admin` is not exempt.
    pub routed_path: &'a str,
}

/// ACME http-01 challenges must stay reachable over plain HTTP, or certificates cannot renew.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

pub fn gate(conn: &Connection, tenant: u32, https_redirect: bool, https_port: u16) -> Gate {
    if conn.tls {
        return match conn.sni_tenant {
            Some(sni_tenant) if sni_tenant != Some(tenant) => Gate::Misdirected,
            _ => Gate::Pass,
        };
    }
    if https_redirect && !conn.routed_path.starts_with(ACME_CHALLENGE) {
        return Gate::Redirect(https_location(conn.host, https_port, conn.path_and_query));
    }
    Gate::Pass
}

/// `https://host[:port]/path?query`; the client's port is dropped, 443 is implied.
pub fn https_location(host: &str, https_port: u16, path_and_query: &str) -> String {
    let bare = match host.strip_prefix('[') {
        Some(rest) => &host[..rest.find(']').map_or(host.len(), |i| i + 2)],
        None => host.split(':').next().unwrap_or(host),
    };
    let path = if path_and_query.is_empty() {
        "/"
    } else {
        path_and_query
    };
    if https_port == 443 {
        format!("https://{bare}{path}")
    } else {
        format!("https://{bare}:{https_port}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn<'a>(tls: bool, sni_tenant: Option<Option<u32>>, pq: &'a str) -> Connection<'a> {
        Connection {
            tls,
            sni_tenant,
            host: "a.test:8080",
            path_and_query: pq,
            routed_path: pq.split('?').next().unwrap_or(pq),
        }
    }

    #[test]
    fn sni_of_another_tenant_is_misdirected() {
        assert_eq!(
            gate(&conn(true, Some(Some(1)), "/"), 1, false, 443),
            Gate::Pass
        );
        assert_eq!(
            gate(&conn(true, Some(Some(2)), "/"), 1, false, 443),
            Gate::Misdirected
        );
        assert_eq!(
            gate(&conn(true, Some(None), "/"), 1, false, 443),
            Gate::Misdirected
        );
        // No SNI at all (an IP address in the URL): Host decides alone.
        assert_eq!(gate(&conn(true, None, "/"), 1, true, 443), Gate::Pass);
    }

    #[test]
    fn the_acme_exemption_is_decided_on_the_routed_path() {
        let mut c = conn(false, None, "/.well-known/acme-challenge/../admin");
        c.routed_path = "/admin";
        assert!(matches!(gate(&c, 1, true, 443), Gate::Redirect(_)));
    }

    #[test]
    fn plain_http_is_redirected_except_acme_challenges() {
        assert_eq!(
            gate(&conn(false, None, "/x?y=1"), 1, true, 443),
            Gate::Redirect("https://a.test/x?y=1".into())
        );
        assert_eq!(
            gate(
                &conn(false, None, "/.well-known/acme-challenge/t"),
                1,
                true,
                443
            ),
            Gate::Pass
        );
        assert_eq!(gate(&conn(false, None, "/"), 1, false, 443), Gate::Pass);
    }

    #[test]
    fn locations() {
        assert_eq!(
            https_location("a.test", 8443, "/p"),
            "https://a.test:8443/p"
        );
        assert_eq!(https_location("[::1]:80", 443, ""), "https://[::1]/");
        assert_eq!(https_location("[::1]", 443, "/"), "https://[::1]/");
    }
}

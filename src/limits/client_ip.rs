//! The client address limits are keyed on. The socket peer, unless that peer is a trusted
//! proxy: then the rightmost `X-Forwarded-For` entry that is not itself trusted. A client can
//! never choose its own address by sending the header.

use std::net::IpAddr;

use ipnet::IpNet;

/// `forwarded_for`: the `X-Forwarded-For` header values, in order.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut last = peer;
    for entry in forwarded_for.rev().flat_map(|h| h.rsplit(',')) {
        let Some(ip) = parse_entry(entry.trim()) else {
            // Garbage in the chain: stop at the last address we could vouch for.
            return Some(last);
        };
        if !is_trusted(&ip) {
            return Some(ip);
        }
        last = ip;
    }
    Some(last)
}

/// The address a client is counted as: IPv4 as it is, IPv6 as its block of `v6_prefix`
/// leading bits (one subscriber commonly holds a whole /64 and can pick any address in it).
pub fn address_block(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let host_bits = 128 - u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:5678`,
/// `[2001:db8::1]:443`), IPv4-mapped IPv6 read as the IPv4 address it is.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer's header is ignored, whatever it claims.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), ["1.2.3.4"].into_iter(), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Behind a trusted proxy: the rightmost untrusted entry, not the spoofable leftmost.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                ["6.6.6.6, 198.51.100.7, 10.0.0.3"].into_iter(),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), std::iter::empty(), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                ["junk, 10.0.0.5"].into_iter(),
                &trusted
            ),
            Some(ip("10.0.0.5"))
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_block() {
        assert_eq!(address_block(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(address_block(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(
            address_block(ip("2001:db8:1:2:3:4:5:6"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_block(ip("2001:db8:1:2ff::9"), 56),
            ip("2001:db8:1:200::")
        );
        assert_eq!(address_block(ip("2001:db8::9"), 128), ip("2001:db8::9"));
    }

    #[test]
    fn entries_with_ports_and_mapped_addresses_are_read() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        for (entry, want) in [
            ("198.51.100.7:5678", "198.51.100.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
        ] {
            assert_eq!(
                client_ip(Some(ip("10.0.0.2")), [entry].into_iter(), &trusted),
                Some(ip(want)),
                "{entry}"
            );
        }
        // A trusted hop written as IPv4-mapped is still trusted.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                ["198.51.100.7, ::ffff:10.0.0.3"].into_iter(),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
    }
}

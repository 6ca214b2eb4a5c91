//! The client's address: the connection's peer, or — when the peer is a
//! trusted proxy (`--trusted-proxies`) — the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy.
//!
//! Right-most, not left-most: every proxy appends the address it received
//! the request from, so only the entries added by trusted proxies are
//! trustworthy; whatever the client wrote itself sits to their left. An
//! untrusted peer's `X-Forwarded-For` is ignored entirely (a client cannot
//! choose its own address). An entry that is not an address ends the walk:
//! the hop that forwarded it (a trusted proxy) is taken as the client, so
//! garbage can never pick an address either.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header proxies append the client's address to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses comma-separated CIDRs (`10.0.0.0/8,127.0.0.1/32`); a bare
    /// address counts as a single host. Blank entries are skipped.
    ///
    /// # Errors
    /// The first entry that is neither a CIDR nor an address.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("not a CIDR or an IP address: {e:?}"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// True when none is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut hop = peer.to_canonical();
        if !self.contains(hop) {
            return hop;
        }
        // Several headers count as one list, in order.
        for value in headers.get_all(FORWARDED_FOR).iter().rev() {
            for entry in value.as_bytes().rsplit(|b| *b == b',') {
                let Some(ip) = parse_entry(entry) else {
                    return hop;
                };
                hop = ip;
                if !self.contains(ip) {
                    return ip;
                }
            }
        }
        hop
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port
/// (`1.2.3.4:80`, `[::1]:80`), spaces around.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 127.0.0.1/32,::1").unwrap()
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let p = proxies();
        assert!(p.contains(ip("10.1.2.3")));
        assert!(p.contains(ip("127.0.0.1")));
        assert!(p.contains(ip("::1")));
        assert!(p.contains(ip("::ffff:10.0.0.1")));
        assert!(!p.contains(ip("127.0.0.2")));
        assert!(!p.contains(ip("11.0.0.1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nope").is_err());
        assert!(TrustedProxies::parse("10.0.0.0/8,,").is_ok());
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let h = headers(&["1.1.1.1, 2.2.2.2"]);
        assert_eq!(proxies().client_ip(ip("8.8.8.8"), &h), ip("8.8.8.8"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("127.0.0.1"), &h),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let p = proxies();
        // The client wrote 6.6.6.6 itself; the proxy appended 5.5.5.5.
        let h = headers(&["6.6.6.6, 5.5.5.5, 10.0.0.7"]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("5.5.5.5"));
        // Several headers are one list.
        let h = headers(&["6.6.6.6", "5.5.5.5:443", "10.0.0.7"]);
        assert_eq!(p.client_ip(ip("10.9.9.9"), &h), ip("5.5.5.5"));
        let h = headers(&["[2001:db8::1]:80"]);
        assert_eq!(p.client_ip(ip("::1"), &h), ip("2001:db8::1"));
        // Only trusted hops: the left-most of them.
        let h = headers(&["10.0.0.1, 10.0.0.2"]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            p.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Garbage ends the walk at the hop that forwarded it.
        let h = headers(&["1.1.1.1, junk, 10.0.0.3"]);
        assert_eq!(p.client_ip(ip("127.0.0.1"), &h), ip("10.0.0.3"));
    }

    proptest! {
        #[test]
        fn random_header_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            peer in any::<[u8; 4]>(),
        ) {
            let p = proxies();
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.append(FORWARDED_FOR, v);
            }
            let peer = IpAddr::from(peer);
            let client = p.client_ip(peer, &h);
            // An untrusted peer is always its own client.
            if !p.contains(peer) {
                prop_assert_eq!(client, peer);
            }
        }

        #[test]
        fn a_chosen_address_needs_a_trusted_peer(
            spoofed in any::<[u8; 4]>(),
            peer in any::<[u8; 4]>(),
        ) {
            let p = TrustedProxies::parse("127.0.0.1/32").unwrap();
            let peer = IpAddr::from(peer);
            let h = headers(&[&IpAddr::from(spoofed).to_string()]);
            let client = p.client_ip(peer, &h);
            if p.contains(peer) {
                prop_assert_eq!(client, IpAddr::from(spoofed));
            } else {
                prop_assert_eq!(client, peer);
            }
        }

        #[test]
        fn random_cidr_lists_never_panic(list in ".{0,80}") {
            let _ = TrustedProxies::parse(&list);
        }
    }
}

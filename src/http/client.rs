//! Who the client is, for the limits that count per client: the connection's peer, unless that
//! peer is a proxy the operator trusts (`--trusted-proxies`), in which case the address it
//! forwarded in `X-Forwarded-For`. Only the rightmost entries are believed, those added by
//! trusted proxies; anything to their left was written by the client and can be anything.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed; none by default, so a client cannot pick
/// its own address by sending the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// `10.0.0.0/8,127.0.0.1`: ranges or single addresses, comma-separated; empty for none.
    fn from_str(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{item:?} is not an address or a range like 10.0.0.0/8"))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: walking `X-Forwarded-For` from the right past trusted proxies,
    /// the first address that is not one; the peer itself when it is not trusted.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = canonical(peer);
        for entry in forwarded.iter().rev() {
            // An unreadable entry ends the walk: what is left of it was not written by a proxy
            // we trust, so the last address we could vouch for is the answer.
            let Ok(ip) = entry.parse::<IpAddr>() else { break };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// IPv4 clients seen through an IPv6 socket (`::ffff:a.b.c.d`) are the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nothing_is_believed_by_default() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("127.0.0.1"), &headers(&["203.0.113.9"])), ip("127.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/8, 127.0.0.1".parse().unwrap();
        // The balancer (127.0.0.1) appended the client it saw; the client's own claim is left of it.
        let h = headers(&["198.51.100.7, 203.0.113.9"]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // Two proxies in a row, over two headers.
        let h = headers(&["198.51.100.7", "203.0.113.9, 10.1.2.3"]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // A peer that is not a trusted proxy is the client, whatever it claims.
        assert_eq!(proxies.client(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        // No header from a trusted proxy: the proxy is the client.
        assert_eq!(proxies.client(ip("10.9.9.9"), &HeaderMap::new()), ip("10.9.9.9"));
        // Garbage on the right stops the walk at the last vouched-for address.
        assert_eq!(proxies.client(ip("127.0.0.1"), &headers(&["203.0.113.9, nonsense"])), ip("127.0.0.1"));
        // IPv4-mapped IPv6 peers are their IPv4 address.
        assert_eq!(proxies.client(ip("::ffff:127.0.0.1"), &headers(&["203.0.113.9"])), ip("203.0.113.9"));
    }

    #[test]
    fn lists_parse_or_name_the_bad_item() {
        assert_eq!("".parse::<TrustedProxies>().unwrap(), TrustedProxies::default());
        assert_eq!("::1, fd00::/8".parse::<TrustedProxies>().unwrap().0.len(), 2);
        let e = "10.0.0.0/8,localhost".parse::<TrustedProxies>().unwrap_err();
        assert!(e.contains("\"localhost\""), "{e}");
    }
}

//! Who sent a request: the TCP peer, or — when the peer is one of the declared
//! TLS-terminating proxies (`NIMBUS_TRUSTED_PROXIES`) — the client that proxy names
//! in `X-Forwarded-For`, and whether it spoke TLS (`X-Forwarded-Proto`).
//!
//! The forwarding headers are believed only from a declared proxy: anyone else can
//! write them. And a request that came through a proxy is never treated as local,
//! even when the proxy itself runs on the same host (a loopback peer): otherwise
//! everything a loopback proxy forwards would pass the loopback-only checks (the
//! services' `/metrics`).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl std::fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(ToString::to_string))
            .finish()
    }
}

/// Where a request came from, as far as this service can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client's address: the peer's, or the one a trusted proxy forwarded.
    /// `None` when it cannot be known (a proxied request without `X-Forwarded-For`).
    pub client: Option<IpAddr>,
    /// Whether a trusted proxy said the client spoke HTTPS to it.
    pub https: bool,
    /// Whether the request came through a trusted proxy.
    pub proxied: bool,
}

impl Origin {
    /// A request straight from `peer`, no proxy in between (a service that
    /// declares no proxies, like the host agent's metrics listener).
    pub fn direct(peer: Option<SocketAddr>) -> Self {
        Self {
            client: peer.map(|peer| peer.ip()),
            https: false,
            proxied: false,
        }
    }

    /// Whether the client is on this host (and did not come through a proxy).
    pub fn is_local(&self) -> bool {
        !self.proxied && self.client.is_some_and(|ip| ip.is_loopback())
    }
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDR ranges
    /// (`10.0.0.5, 10.1.0.0/16, fd00::/8`); blank entries are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = if entry.contains('/') {
                entry.parse::<IpNet>().map_err(|_| {
                    format!("{entry:?} is not an IP address or CIDR range (prefix length 0 to 32 for IPv4, 0 to 128 for IPv6)")
                })?
            } else {
                entry
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("{entry:?} is not an IP address or CIDR range"))?
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// Whether no proxy is declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The declared entries, as written in CIDR form.
    pub fn entries(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// Whether `ip` is one of the declared proxies. IPv4-mapped IPv6 peers
    /// (`::ffff:10.0.0.5`, what a dual-stack listener reports) match IPv4 entries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Where the request from `peer` with `headers` came from. From a trusted
    /// proxy, the client is the right-most `X-Forwarded-For` address that is not
    /// itself a trusted proxy (each proxy appends the address it saw, so entries
    /// left of an untrusted hop are the client's own claims and are ignored).
    pub fn origin(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Origin {
        let peer_ip = peer.map(|peer| peer.ip());
        if !peer_ip.is_some_and(|ip| self.contains(ip)) {
            return Origin::direct(peer);
        }
        let client = self.forwarded_client(headers);
        let https = headers
            .get_all("x-forwarded-proto")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        Origin {
            client,
            https,
            proxied: true,
        }
    }
}

impl TrustedProxies {
    fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            hops.extend(value.to_str().ok()?.split(',').map(str::trim));
        }
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            // An entry we cannot read: nothing left of it can be attributed.
            let ip = parse_hop(hop)?;
            if !self.contains(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`203.0.113.9`, `203.0.113.9:4711`, `[2001:db8::1]:4711`, `2001:db8::1`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().expect("ip"), 40000))
    }

    #[test]
    fn parses_addresses_and_ranges_and_refuses_the_rest() {
        let proxies = TrustedProxies::parse("10.0.0.5, 10.1.0.0/16,fd00::/8,").expect("valid");
        assert_eq!(
            proxies.entries(),
            ["10.0.0.5/32", "10.1.0.0/16", "fd00::/8"]
        );
        assert!(proxies.contains("10.1.200.3".parse().expect("ip")));
        assert!(proxies.contains("::ffff:10.0.0.5".parse().expect("ip")));
        assert!(!proxies.contains("10.0.0.6".parse().expect("ip")));
        for bad in ["proxy.example", "10.0.0.0/33", "::1/129", "10.0.0/8"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse(" , ").expect("blank").is_empty());
    }

    #[test]
    fn headers_from_an_undeclared_peer_are_ignored() {
        let none = TrustedProxies::default();
        let forged = headers(&[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let origin = none.origin(peer("198.51.100.7"), &forged);
        assert_eq!(origin.client, Some("198.51.100.7".parse().expect("ip")));
        assert!(!origin.https && !origin.proxied && !origin.is_local());
        // A loopback peer with no proxy declared is local (dev set-ups).
        assert!(none.origin(peer("127.0.0.1"), &forged).is_local());
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_is_never_local() {
        let proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/24").expect("valid");
        let origin = proxies.origin(
            peer("127.0.0.1"),
            &headers(&[
                ("x-forwarded-for", "127.0.0.1, 203.0.113.9, 10.0.0.4"),
                ("x-forwarded-proto", "https"),
            ]),
        );
        // The client's own claim (127.0.0.1, left of the first untrusted hop) is ignored.
        assert_eq!(origin.client, Some("203.0.113.9".parse().expect("ip")));
        assert!(origin.https && origin.proxied && !origin.is_local());

        // Proxied without X-Forwarded-For: the client is unknown, not the proxy.
        let origin = proxies.origin(peer("127.0.0.1"), &HeaderMap::new());
        assert_eq!(origin.client, None);
        assert!(!origin.is_local() && !origin.https);

        // Every hop trusted: the left-most is the client. Ports are allowed.
        let origin = proxies.origin(
            peer("10.0.0.2"),
            &headers(&[("x-forwarded-for", "10.0.0.9:5555, 10.0.0.3")]),
        );
        assert_eq!(origin.client, Some("10.0.0.9".parse().expect("ip")));

        // An unreadable hop makes the client unknown; plain http stays http.
        let origin = proxies.origin(
            peer("10.0.0.2"),
            &headers(&[
                ("x-forwarded-for", "unknown, 10.0.0.3"),
                ("x-forwarded-proto", "http"),
            ]),
        );
        assert_eq!(origin.client, None);
        assert!(!origin.https);

        // IPv6 with brackets and port.
        let origin = proxies.origin(
            peer("10.0.0.2"),
            &headers(&[("x-forwarded-for", "[2001:db8::1]:4711")]),
        );
        assert_eq!(origin.client, Some("2001:db8::1".parse().expect("ip")));
    }
}

//! Where a job's traffic may go: the egress policy, as iptables rules in the VM's
//! own network namespace (which the job cannot touch: it was made by the host, and
//! a VM has a kernel of its own while a sandbox has no capability over it).
//!
//! Denied by default: the host's own addresses and every range that is not the
//! public internet — loopback, private (RFC 1918), shared (100.64/10), link-local
//! (169.254/16, where clouds serve instance metadata and credentials), benchmarking,
//! multicast and reserved. `NIMBUS_VM_EGRESS_ALLOW` lists CIDRs let through anyway
//! (checked first: an internal artifact server, say); `NIMBUS_VM_EGRESS_DENY` adds
//! CIDRs to refuse. The host's DNS servers stay reachable on port 53 so names
//! resolve. Refused connections are rejected at once (TCP reset, ICMP otherwise)
//! and counted in `nimbus_host_agent_egress_refused_total`. IPv6 is switched off in
//! the namespace, so no address family slips past the rules.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network, `A.B.C.D/N` (a bare address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// An address in the network, as given (host bits may be set; see [`Cidr::network`]).
    pub address: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/prefix`; usable in constants.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Cidr {
            address: Ipv4Addr::new(a, b, c, d),
            prefix,
        }
    }

    /// The network's first address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(u32::from(self.address) & mask)
    }

    /// Whether `address` lies in this network.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        Cidr {
            address,
            prefix: self.prefix,
        }
        .network()
            == self.network()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (
                address,
                prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| format!("{text:?}: the prefix must be 0 to 32"))?,
            ),
            None => (text, 32),
        };
        let address = address
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{text:?} is not an IPv4 address or CIDR (A.B.C.D/N)"))?;
        Ok(Cidr { address, prefix })
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Ranges no job reaches unless `NIMBUS_VM_EGRESS_ALLOW` says so (IANA special
/// purpose registry, minus the documentation ranges, which route nowhere real).
pub const DEFAULT_DENY: &[Cidr] = &[
    Cidr::new(0, 0, 0, 0, 8),      // "this network"
    Cidr::new(10, 0, 0, 0, 8),     // private
    Cidr::new(100, 64, 0, 0, 10),  // shared address space (carrier NAT)
    Cidr::new(127, 0, 0, 0, 8),    // loopback
    Cidr::new(169, 254, 0, 0, 16), // link-local: cloud metadata (169.254.169.254)
    Cidr::new(172, 16, 0, 0, 12),  // private
    Cidr::new(192, 0, 0, 0, 24),   // IETF protocol assignments
    Cidr::new(192, 168, 0, 0, 16), // private
    Cidr::new(198, 18, 0, 0, 15),  // benchmarking
    Cidr::new(224, 0, 0, 0, 4),    // multicast
    Cidr::new(240, 0, 0, 0, 4),    // reserved, broadcast
];

/// The operator's additions to the default policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPolicy {
    /// Let through even when a deny range covers them (`NIMBUS_VM_EGRESS_ALLOW`).
    pub allow: Vec<Cidr>,
    /// Refused besides the defaults (`NIMBUS_VM_EGRESS_DENY`).
    pub deny: Vec<Cidr>,
}

impl EgressPolicy {
    /// Parses `NIMBUS_VM_EGRESS_ALLOW`/`_DENY` values: CIDRs separated by commas or
    /// white space.
    pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
        text.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect()
    }
}

/// The chain in the VM's namespace every packet a job sends passes through.
pub const CHAIN: &str = "NIMBUS-EGRESS";

/// iptables argument lists (each one `iptables -w …` call) that build the chain:
/// allowed ranges and DNS first, then rejections of the denied ones (defaults, the
/// policy's, the host's own addresses); what is left is the internet.
pub fn rules(
    policy: &EgressPolicy,
    host_addresses: &[Ipv4Addr],
    dns: &[Ipv4Addr],
) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    let rule = |parts: &[&str]| -> Vec<String> {
        let mut args = vec!["-w".to_string(), "-A".to_string(), CHAIN.to_string()];
        args.extend(parts.iter().map(|p| p.to_string()));
        args
    };
    // Loopback inside the namespace: the host services' relays live there.
    rules.push(rule(&["-o", "lo", "-j", "RETURN"]));
    for cidr in &policy.allow {
        rules.push(rule(&["-d", &cidr.to_string(), "-j", "RETURN"]));
    }
    for server in dns {
        for protocol in ["udp", "tcp"] {
            rules.push(rule(&[
                "-d",
                &format!("{server}/32"),
                "-p",
                protocol,
                "--dport",
                "53",
                "-j",
                "RETURN",
            ]));
        }
    }
    let mut denied: Vec<Cidr> = DEFAULT_DENY.to_vec();
    denied.extend(policy.deny.iter().copied());
    denied.extend(host_addresses.iter().map(|a| Cidr {
        address: *a,
        prefix: 32,
    }));
    denied.dedup();
    for cidr in denied {
        let destination = cidr.to_string();
        rules.push(rule(&[
            "-d",
            &destination,
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]));
        rules.push(rule(&["-d", &destination, "-j", "REJECT"]));
    }
    rules
}

/// Packets the chain rejected, from `iptables -L CHAIN -v -x -n` output.
pub fn rejected_packets(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|line| line.contains("REJECT"))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The IPv4 nameservers of a `resolv.conf` that a VM can reach (not loopback: the
/// VM's loopback is its own).
pub fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|address| !address.is_loopback())
        .collect()
}

/// The IPv4 addresses of `ip -4 -o addr show` output.
pub fn addresses(ip_output: &str) -> Vec<Ipv4Addr> {
    ip_output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let cidr: Cidr = "169.254.169.254/16".parse().expect("cidr");
        assert_eq!(cidr.to_string(), "169.254.0.0/16");
        assert!(cidr.contains(Ipv4Addr::new(169, 254, 1, 2)));
        assert!(!cidr.contains(Ipv4Addr::new(169, 253, 1, 2)));
        assert_eq!("10.1.2.3".parse::<Cidr>().expect("bare").prefix, 32);
        for bad in ["10.0.0.0/33", "10.0.0/8", "fe80::/10", "x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            EgressPolicy::parse_list("10.1.0.0/16, 192.168.5.5 ").expect("list"),
            vec![Cidr::new(10, 1, 0, 0, 16), Cidr::new(192, 168, 5, 5, 32)]
        );
        assert!(EgressPolicy::parse_list("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn the_defaults_cover_metadata_private_ranges_and_loopback() {
        let denied = |a: [u8; 4]| DEFAULT_DENY.iter().any(|c| c.contains(Ipv4Addr::from(a)));
        for address in [
            [169, 254, 169, 254],
            [10, 0, 0, 1],
            [172, 20, 0, 1],
            [192, 168, 1, 1],
            [127, 0, 0, 1],
            [100, 100, 100, 200],
        ] {
            assert!(denied(address), "{address:?}");
        }
        for address in [[1, 1, 1, 1], [140, 82, 112, 3], [203, 0, 113, 10]] {
            assert!(!denied(address), "{address:?}");
        }
    }

    #[test]
    fn rules_allow_first_then_reject() {
        let policy = EgressPolicy {
            allow: vec![Cidr::new(10, 9, 0, 0, 16)],
            deny: vec![Cidr::new(8, 8, 8, 8, 32)],
        };
        let rules = rules(
            &policy,
            &[Ipv4Addr::new(192, 0, 2, 2)],
            &[Ipv4Addr::new(10, 255, 255, 53)],
        );
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        let position = |needle: &str| {
            text.iter()
                .position(|line| line.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing from {text:#?}"))
        };
        assert!(position("10.9.0.0/16 -j RETURN") < position("10.0.0.0/8 -p tcp -j REJECT"));
        assert!(position("10.255.255.53/32 -p udp --dport 53") < position("10.0.0.0/8 -j REJECT"));
        position("8.8.8.8/32 -j REJECT");
        position("192.0.2.2/32 -j REJECT");
        assert!(text[0].contains("-o lo -j RETURN"));
    }

    #[test]
    fn counters_nameservers_and_addresses_are_read() {
        let listing = "Chain NIMBUS-EGRESS (2 references)\n    pkts      bytes target     prot opt in     out     source               destination\n       0        0 RETURN     all  --  *      lo      0.0.0.0/0            0.0.0.0/0\n       3      180 REJECT     tcp  --  *      *       0.0.0.0/0            169.254.0.0/16       reject-with tcp-reset\n       2      120 REJECT     all  --  *      *       0.0.0.0/0            10.0.0.0/8           reject-with icmp-port-unreachable\n";
        assert_eq!(rejected_packets(listing), 5);
        assert_eq!(
            nameservers(
                "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver fe80::1\n"
            ),
            vec![Ipv4Addr::new(10, 255, 255, 53)]
        );
        assert_eq!(
            addresses("1: lo    inet 127.0.0.1/8 scope host lo\n4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n"),
            vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 2)]
        );
    }
}

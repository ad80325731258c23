//! Per-VM networking: a network namespace of the VM's own, so VMs never share a
//! link. A VM (QEMU, Firecracker) attaches to a tap device in it; a sandbox job
//! lives in the namespace itself. With egress off that is all there is; with egress
//! on, a veth pair joins the namespace to the host, both ends masquerade, and the
//! [`egress`] policy decides where the job's packets may go (not the host, not
//! metadata or private ranges, by default). Host services a job needs (the cache
//! proxy) are reached through [`relay`]s at the gateway address, whatever the mode.
//!
//! Addresses: the gateway (tap, or the namespace's loopback for a sandbox) is
//! 172.30.0.1 and a VM is 172.30.0.2/30 (the same in every namespace, they never
//! meet); the veth link of VM n is 10.213.x.y/30, picked from the VM id's hash.
//! Needs root (CAP_NET_ADMIN), `ip` and, for egress, `iptables`.

pub mod egress;
pub mod relay;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::LazyLock;

use prometheus::IntCounter;
use tokio::process::Command;

pub use egress::{Cidr, EgressPolicy};
pub use relay::Relay;

use crate::runtime::run_tool;
use crate::{Error, Result};

/// The guest's address and prefix, the same in every VM's namespace.
pub const GUEST_ADDRESS: &str = "172.30.0.2/30";
/// The guest's default gateway: the tap's address in the namespace.
pub const GUEST_GATEWAY: &str = "172.30.0.1";
/// Where host services' relays listen in every VM's namespace.
pub const SERVICES_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

/// Connections the egress policy refused, all VMs of this process together. Read
/// from each namespace's rule counters when its VM goes; the host agent exports it.
pub fn egress_refused() -> &'static IntCounter {
    static COUNTER: LazyLock<IntCounter> = LazyLock::new(|| {
        IntCounter::new(
            "nimbus_host_agent_egress_refused_total",
            "Packets of jobs' connections the egress policy refused (to the host, metadata, private or denied ranges).",
        )
        .expect("a constant, valid metric name and help")
    });
    &COUNTER
}

/// What a VM's network is to have.
#[derive(Debug, Clone, Copy)]
pub struct NetworkPlan<'a> {
    /// Routed out (NAT) under the egress policy; otherwise no route out at all.
    pub egress: bool,
    /// A tap device for a VM to attach to; a sandbox lives in the namespace.
    pub tap: bool,
    /// Where the job's traffic may go, with `egress` on.
    pub policy: &'a EgressPolicy,
    /// Host services (`host:port`) relayed to `SERVICES_ADDRESS:port`.
    pub forwards: &'a [String],
}

/// One VM's network namespace, with its tap, veth, NAT and egress rules and relays.
///
/// Dropping it stops only the relays: the namespace, veth and rules stay until
/// [`VmNetwork::remove`].
#[derive(Debug)]
pub struct VmNetwork {
    namespace: String,
    host_veth: Option<String>,
    veth_subnet: Option<String>,
    mac: String,
    tap: bool,
    filtered: bool,
    relays: Vec<Relay>,
}

impl VmNetwork {
    /// Creates the namespace and everything `plan` asks for; on failure, removes what it made.
    pub async fn create(vm_id: &str, plan: &NetworkPlan<'_>) -> Result<Self> {
        let hash = fnv(vm_id);
        let short = format!("{:08x}", hash as u32);
        let namespace = format!("nimbus-{short}");
        let mac = format!(
            "06:00:{:02x}:{:02x}:{:02x}:{:02x}",
            (hash >> 24) as u8,
            (hash >> 16) as u8,
            (hash >> 8) as u8,
            hash as u8
        );
        let mut network = VmNetwork {
            namespace: namespace.clone(),
            host_veth: None,
            veth_subnet: None,
            mac,
            tap: plan.tap,
            filtered: false,
            relays: Vec::new(),
        };
        if let Err(error) = network.set_up(&short, hash, plan).await {
            network.clone_handle().remove().await;
            return Err(error);
        }
        Ok(network)
    }

    /// The network `spec` asks for (`None` for `NetworkSpec::None`); `tap` for a VM
    /// driver, not for the sandbox.
    pub async fn for_spec(spec: &crate::VmSpec, tap: bool) -> Result<Option<VmNetwork>> {
        let crate::spec::NetworkSpec::Tap { egress } = spec.network else {
            return Ok(None);
        };
        let plan = NetworkPlan {
            egress,
            tap,
            policy: &spec.egress_policy,
            forwards: &spec.forwards,
        };
        Ok(Some(VmNetwork::create(&spec.id, &plan).await?))
    }

    /// What `create(vm_id, …)` would have made, for removing what a crashed agent
    /// left behind (namespace with its tap, host veth, NAT rule); names derive from
    /// the VM id, so nothing needs to have been recorded.
    pub fn leftover(vm_id: &str) -> VmNetwork {
        let hash = fnv(vm_id);
        let short = format!("{:08x}", hash as u32);
        let x = (hash >> 8) as u8;
        let y = (hash as u8) & 0xfc;
        VmNetwork {
            namespace: format!("nimbus-{short}"),
            host_veth: Some(format!("nbh{short}")),
            veth_subnet: Some(format!("10.213.{x}.{y}/30")),
            mac: String::new(),
            tap: true,
            filtered: false,
            relays: Vec::new(),
        }
    }

    /// The host-side subnet NATed out (egress only).
    pub fn egress_subnet(&self) -> Option<&str> {
        self.veth_subnet.as_deref()
    }

    /// Whether this network's namespace exists on the host.
    pub fn exists(&self) -> bool {
        std::path::Path::new("/run/netns")
            .join(&self.namespace)
            .exists()
    }

    fn clone_handle(&self) -> VmNetwork {
        VmNetwork {
            namespace: self.namespace.clone(),
            host_veth: self.host_veth.clone(),
            veth_subnet: self.veth_subnet.clone(),
            mac: self.mac.clone(),
            tap: self.tap,
            filtered: self.filtered,
            relays: Vec::new(),
        }
    }

    async fn set_up(&mut self, short: &str, hash: u64, plan: &NetworkPlan<'_>) -> Result<()> {
        let ns = self.namespace.clone();
        ip(&["netns", "add", &ns]).await?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]).await?;
        // No IPv6 in the namespace: the egress rules are IPv4 rules.
        let _ = in_ns(
            &ns,
            &["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        )
        .await;
        let _ = in_ns(
            &ns,
            &["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"],
        )
        .await;
        if plan.tap {
            in_ns(&ns, &["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]).await?;
            in_ns(&ns, &["ip", "addr", "add", "172.30.0.1/30", "dev", "tap0"]).await?;
            in_ns(&ns, &["ip", "link", "set", "tap0", "up"]).await?;
        } else {
            // A sandbox job reaches its relays at the same address a VM does.
            in_ns(&ns, &["ip", "addr", "add", "172.30.0.1/32", "dev", "lo"]).await?;
        }
        if plan.egress {
            let x = (hash >> 8) as u8;
            let y = (hash as u8) & 0xfc;
            let subnet = format!("10.213.{x}.{y}/30");
            let host_address = format!("10.213.{x}.{}/30", y + 1);
            let ns_address = format!("10.213.{x}.{}/30", y + 2);
            let gateway = format!("10.213.{x}.{}", y + 1);
            let host_veth = format!("nbh{short}");
            // The rules first: no packet leaves before the policy is in force.
            self.install_egress_policy(plan.policy).await?;
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "uplink0", "netns", &ns,
            ])
            .await?;
            self.host_veth = Some(host_veth.clone());
            let _ = run_tool(
                "sysctl",
                &[
                    "-q",
                    "-w",
                    &format!("net.ipv6.conf.{host_veth}.disable_ipv6=1"),
                ],
            )
            .await;
            ip(&["addr", "add", &host_address, "dev", &host_veth]).await?;
            ip(&["link", "set", &host_veth, "up"]).await?;
            in_ns(&ns, &["ip", "addr", "add", &ns_address, "dev", "uplink0"]).await?;
            in_ns(&ns, &["ip", "link", "set", "uplink0", "up"]).await?;
            in_ns(&ns, &["ip", "route", "add", "default", "via", &gateway]).await?;
            in_ns(&ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).await?;
            in_ns(
                &ns,
                &[
                    "iptables",
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    "uplink0",
                    "-j",
                    "MASQUERADE",
                ],
            )
            .await?;
            run_tool("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).await?;
            run_tool(
                "iptables",
                &[
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    &subnet,
                    "-j",
                    "MASQUERADE",
                ],
            )
            .await?;
            self.veth_subnet = Some(subnet);
        }
        for upstream in plan.forwards {
            let port = upstream
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .ok_or_else(|| {
                    Error::Config(format!("relay target {upstream:?} is not host:port"))
                })?;
            self.relays
                .push(Relay::start(&ns, SERVICES_ADDRESS, port, upstream).await?);
        }
        Ok(())
    }

    /// The egress chain in the namespace, hooked where a job's packets pass.
    async fn install_egress_policy(&mut self, policy: &EgressPolicy) -> Result<()> {
        let ns = self.namespace.clone();
        let host_addresses =
            egress::addresses(&run_tool("ip", &["-4", "-o", "addr", "show"]).await?);
        let dns =
            egress::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        in_ns(&ns, &["iptables", "-w", "-N", egress::CHAIN]).await?;
        self.filtered = true;
        for rule in egress::rules(policy, &host_addresses, &dns) {
            let mut args = vec!["iptables"];
            args.extend(rule.iter().map(String::as_str));
            in_ns(&ns, &args).await?;
        }
        // A VM's packets are forwarded from its tap (what the namespace itself sends
        // then is the relays' answers to the VM); a sandbox job sends its own.
        let hook: &[&str] = if self.tap {
            &[
                "iptables",
                "-w",
                "-A",
                "FORWARD",
                "-i",
                "tap0",
                "-j",
                egress::CHAIN,
            ]
        } else {
            &["iptables", "-w", "-A", "OUTPUT", "-j", egress::CHAIN]
        };
        in_ns(&ns, hook).await
    }

    /// The tap device inside the namespace.
    pub fn tap(&self) -> &str {
        "tap0"
    }

    /// The guest's MAC address, derived from the VM id.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// Name of the network namespace (`nimbus-<hash>`), as `ip netns` knows it.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The namespace as a file, for `setns`.
    pub fn namespace_path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.namespace)
    }

    /// A command that runs `program` inside the VM's namespace.
    pub fn wrap(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// Kernel arguments that configure the guest's interface.
    pub fn guest_boot_args(&self) -> Vec<String> {
        vec![format!("nimbus.net={GUEST_ADDRESS},{GUEST_GATEWAY}")]
    }

    /// Connections the egress policy refused so far.
    pub async fn refused(&self) -> u64 {
        if !self.filtered {
            return 0;
        }
        match in_ns_output(
            &self.namespace,
            &["iptables", "-w", "-L", egress::CHAIN, "-v", "-x", "-n"],
        )
        .await
        {
            Ok(listing) => egress::rejected_packets(&listing),
            Err(_) => 0,
        }
    }

    /// Removes everything `create` made (counting what the policy refused first);
    /// errors are ignored (best effort, idempotent).
    pub async fn remove(mut self) {
        let refused = self.refused().await;
        egress_refused().inc_by(refused);
        self.relays.clear();
        if let Some(subnet) = &self.veth_subnet {
            let _ = run_tool(
                "iptables",
                &[
                    "-w",
                    "-t",
                    "nat",
                    "-D",
                    "POSTROUTING",
                    "-s",
                    subnet,
                    "-j",
                    "MASQUERADE",
                ],
            )
            .await;
        }
        if let Some(veth) = &self.host_veth {
            let _ = ip(&["link", "del", veth]).await;
        }
        let _ = ip(&["netns", "del", &self.namespace]).await;
    }
}

async fn ip(args: &[&str]) -> Result<()> {
    run_tool("ip", args).await.map(drop)
}

async fn in_ns_output(namespace: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", namespace];
    full.extend_from_slice(args);
    run_tool("ip", &full).await.map_err(|e| match e {
        Error::Command { command, message } => Error::Command {
            command,
            message: format!("{message} (per-VM networking needs root, iproute2 and iptables)"),
        },
        other => other,
    })
}

async fn in_ns(namespace: &str, args: &[&str]) -> Result<()> {
    in_ns_output(namespace, args).await.map(drop)
}

/// FNV-1a: a stable hash of the VM id for names and addresses.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
    })
}

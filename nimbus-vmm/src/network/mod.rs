//! Per-VM networking: a network namespace of the VM's own holding a tap device the
//! VM process attaches to, so VMs never share a link. With egress off that tap is
//! all there is (the guest reaches nothing but its namespace); with egress on, a
//! veth pair joins the namespace to the host and both ends masquerade, so the guest
//! reaches the host's uplink and nothing can reach the guest from outside.
//!
//! Addresses: the guest is 172.30.0.2/30 behind the tap at 172.30.0.1 (the same in
//! every namespace, they never meet); the veth link of VM n is 10.213.x.y/30, picked
//! from the VM id's hash. Needs root (CAP_NET_ADMIN), `ip` and, for egress,
//! `iptables`.

use std::path::Path;

use tokio::process::Command;

use crate::runtime::run_tool;
use crate::{Error, Result};

pub const GUEST_ADDRESS: &str = "172.30.0.2/30";
pub const GUEST_GATEWAY: &str = "172.30.0.1";

#[derive(Debug)]
pub struct VmNetwork {
    namespace: String,
    host_veth: Option<String>,
    veth_subnet: Option<String>,
    mac: String,
}

impl VmNetwork {
    pub async fn create(vm_id: &str, egress: bool) -> Result<Self> {
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
        };
        if let Err(error) = network.set_up(&short, hash, egress).await {
            network.clone_handle().remove().await;
            return Err(error);
        }
        Ok(network)
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
        }
    }

    async fn set_up(&mut self, short: &str, hash: u64, egress: bool) -> Result<()> {
        let ns = self.namespace.clone();
        ip(&["netns", "add", &ns]).await?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]).await?;
        in_ns(&ns, &["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]).await?;
        in_ns(&ns, &["ip", "addr", "add", "172.30.0.1/30", "dev", "tap0"]).await?;
        in_ns(&ns, &["ip", "link", "set", "tap0", "up"]).await?;
        if egress {
            let x = (hash >> 8) as u8;
            let y = (hash as u8) & 0xfc;
            let subnet = format!("10.213.{x}.{y}/30");
            let host_address = format!("10.213.{x}.{}/30", y + 1);
            let ns_address = format!("10.213.{x}.{}/30", y + 2);
            let gateway = format!("10.213.{x}.{}", y + 1);
            let host_veth = format!("nbh{short}");
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "uplink0", "netns", &ns,
            ])
            .await?;
            self.host_veth = Some(host_veth.clone());
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
        Ok(())
    }

    /// The tap device inside the namespace.
    pub fn tap(&self) -> &str {
        "tap0"
    }

    pub fn mac(&self) -> &str {
        &self.mac
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
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

    /// Removes everything `create` made; errors are ignored (best effort, idempotent).
    pub async fn remove(self) {
        if let Some(subnet) = &self.veth_subnet {
            let _ = run_tool(
                "iptables",
                &[
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

async fn in_ns(namespace: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["netns", "exec", namespace];
    full.extend_from_slice(args);
    run_tool("ip", &full).await.map(drop).map_err(|e| match e {
        Error::Command { command, message } => Error::Command {
            command,
            message: format!("{message} (per-VM networking needs root, iproute2 and iptables)"),
        },
        other => other,
    })
}

/// FNV-1a: a stable hash of the VM id for names and addresses.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3)
    })
}

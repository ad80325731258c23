//! Per-VM networking for real, under QEMU and in the sandbox: with `egress` a job
//! reaches "the internet" (a stand-in) but not the host's services, the cloud
//! metadata address or a private network (stand-ins the test makes in a namespace
//! of its own, which the host reaches); `isolated` reaches nothing; both reach a
//! host service through their relay; the namespace is gone with the VM. Needs
//! root, iproute2, iptables and python3 (scripts/guest-assets.sh installs them).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nimbus_vmm::assets::AssetSet;
use nimbus_vmm::launch;
use nimbus_vmm::protocol::GuestJob;
use nimbus_vmm::qemu::{QemuConfig, QemuDriver};
use nimbus_vmm::sandbox::{SandboxConfig, SandboxDriver};
use nimbus_vmm::spec::NetworkSpec;
use nimbus_vmm::testsuite::standins;
use nimbus_vmm::{DriverKind, JobEvent, Outcome, VmmDriver};

fn ready() -> Option<PathBuf> {
    let assets = std::env::var_os("NIMBUS_TEST_ASSETS").map(PathBuf::from);
    let root = nix::unistd::Uid::effective().is_root();
    let iptables = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok();
    nimbus_core::testsuite::require(
        assets.filter(|_| root && iptables),
        "NIMBUS_TEST_ASSETS, root and iptables",
    )
}

/// The host's address on its default route: reachable from a VM only through egress.
fn host_address() -> Ipv4Addr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket.connect("192.0.2.200:9").expect("route");
    match socket.local_addr().expect("addr").ip() {
        std::net::IpAddr::V4(v4) if !v4.is_loopback() => v4,
        _ => Ipv4Addr::new(127, 0, 0, 1),
    }
}

/// A host service answering `pong` to any request (what a relay forwards to, or
/// what a job must not reach directly).
async fn pong_server(address: &str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong")
                .await;
        }
    });
    (port, server)
}

/// Runs a job in a VM of `driver` that tries every kind of destination and prints
/// `NAME: ANSWER` (or `NAME: refused`) for each.
async fn probe_from_guest(
    driver: Arc<dyn VmmDriver>,
    kind: DriverKind,
    network: NetworkSpec,
) -> (Outcome, Vec<String>) {
    let assets = AssetSet::open(&ready().expect("checked"))
        .expect("assets")
        .verify(kind, None)
        .expect("verified");
    // A service on all the host's addresses (like a control plane on 0.0.0.0:8000)
    // and one on its loopback that the job may use through its relay.
    let (open_port, open_server) = pong_server("0.0.0.0:0").await;
    let (relayed_port, relayed_server) = pong_server("127.0.0.1:0").await;
    let env = nimbus_core::Env::from_map([
        ("NIMBUS_VM_SCRATCH_MIB", "64"),
        ("NIMBUS_VM_VCPUS", "1"),
        ("NIMBUS_VM_MEMORY_MIB", "512"),
    ]);
    let mut config = nimbus_vmm::select::VmmConfig::from_env(&env).expect("config");
    config.network = network;
    let mut spec = launch::spec(
        &config,
        &assets,
        launch::unique_id("net"),
        Duration::from_secs(90),
    );
    spec.boot_timeout = Duration::from_secs(90);
    spec.forwards = vec![format!("127.0.0.1:{relayed_port}")];
    let script = format!(
        r#"try() {{ if out=$(curl -s -m 4 "$2"); then echo "$1: $out"; else echo "$1: refused"; fi; }}
gateway=$(ip route | awk '/^default/ {{print $3}}')
try public http://{public}/
try metadata http://{metadata}/
try private http://{private}/
try host http://{host}:{open_port}/
try gateway "http://$gateway:{open_port}/"
try loopback http://127.0.0.1:{open_port}/
try relay http://172.30.0.1:{relayed_port}/"#,
        public = standins::PUBLIC,
        metadata = standins::METADATA,
        private = standins::PRIVATE,
        host = host_address(),
    );
    let job = GuestJob::from_commands(&[script]);
    let mut lines = Vec::new();
    let mut on_event = |event: JobEvent| {
        if let JobEvent::Output(line) = event {
            lines.push(line.line);
        }
    };
    let (_, report) = launch::run_once(&driver, &spec, &job, &mut |_| {}, &mut on_event)
        .await
        .expect("runs");
    open_server.abort();
    relayed_server.abort();
    (report.outcome, lines)
}

fn expected(public: &str) -> Vec<String> {
    [
        ("public", public),
        ("metadata", "refused"),
        ("private", "refused"),
        ("host", "refused"),
        ("gateway", "refused"),
        ("loopback", "refused"),
        ("relay", "pong"),
    ]
    .iter()
    .map(|(name, answer)| format!("{name}: {answer}"))
    .collect()
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .into_owned()
}

/// Egress reaches the internet (a stand-in in a documentation range) but not the
/// host's own services, the metadata service or a private network (stand-ins the
/// host itself reaches); the cache-like host service is reached through the relay.
/// Isolated reaches nothing but the relay.
async fn egress_is_filtered(driver: Arc<dyn VmmDriver>, kind: DriverKind) {
    let stand_ins = standins::StandIns::start().expect("stand-ins");
    let refused_before = nimbus_vmm::network::egress_refused().get();
    let (outcome, lines) =
        probe_from_guest(driver.clone(), kind, NetworkSpec::Tap { egress: true }).await;
    assert_eq!(
        (outcome, lines),
        (Outcome::Exited { code: 0 }, expected("public"))
    );
    assert!(
        nimbus_vmm::network::egress_refused().get() > refused_before,
        "refused connections are counted"
    );
    let (outcome, lines) = probe_from_guest(driver, kind, NetworkSpec::Tap { egress: false }).await;
    assert_eq!(
        (outcome, lines),
        (Outcome::Exited { code: 0 }, expected("refused"))
    );
    // The stand-ins were up all along: the host reaches each.
    for address in [standins::METADATA, standins::PRIVATE, standins::PUBLIC] {
        assert!(standins::StandIns::fetch(address).is_some(), "{address}");
    }
    drop(stand_ins);
    assert!(
        !namespaces()
            .lines()
            .any(|l| l.starts_with("nimbus-") && !l.starts_with("nimbus-standin")),
        "VM namespaces are removed: {}",
        namespaces()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_egress_is_filtered_and_isolated_reaches_only_the_relay() {
    if ready().is_none() {
        return;
    }
    let runtime_dir = std::env::temp_dir().join(format!("nimbus-net-qemu-{}", std::process::id()));
    let driver: Arc<dyn VmmDriver> = Arc::new(QemuDriver::new(QemuConfig {
        binary: None,
        accel: None,
        runtime_dir,
        transport: Default::default(),
    }));
    egress_is_filtered(driver, DriverKind::Qemu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_egress_is_filtered_and_isolated_reaches_only_the_relay() {
    if ready().is_none() {
        return;
    }
    let runtime_dir =
        std::env::temp_dir().join(format!("nimbus-net-sandbox-{}", std::process::id()));
    let driver: Arc<dyn VmmDriver> = Arc::new(SandboxDriver::new(SandboxConfig { runtime_dir }));
    egress_is_filtered(driver, DriverKind::Sandbox).await;
}

/// What a crashed agent leaves (namespace, tap, host veth, NAT rule) is found from
/// the VM id alone and removed.
#[tokio::test]
async fn a_network_left_by_a_crash_is_found_from_the_vm_id_and_removed() {
    if ready().is_none() {
        return;
    }
    use nimbus_vmm::network::VmNetwork;
    let vm_id = format!("job-crash-{}", std::process::id());
    let plan = nimbus_vmm::network::NetworkPlan {
        egress: true,
        tap: true,
        policy: &Default::default(),
        forwards: &[],
    };
    let network = VmNetwork::create(&vm_id, &plan).await.expect("network");
    let namespace = network.namespace().to_string();
    std::mem::forget(network); // the agent died: nothing removed it
    let leftover = VmNetwork::leftover(&vm_id);
    assert_eq!(leftover.namespace(), namespace);
    assert!(leftover.exists());
    let subnet = leftover.egress_subnet().expect("subnet").to_string();
    let nat_rules = || {
        String::from_utf8_lossy(
            &std::process::Command::new("iptables")
                .args(["-t", "nat", "-S", "POSTROUTING"])
                .output()
                .expect("iptables")
                .stdout,
        )
        .into_owned()
    };
    assert!(nat_rules().contains(&subnet), "the crash left its NAT rule");
    leftover.remove().await;
    assert!(!VmNetwork::leftover(&vm_id).exists(), "namespace removed");
    let links = std::process::Command::new("ip")
        .args(["link"])
        .output()
        .expect("ip");
    let veth = format!("nbh{}", namespace.trim_start_matches("nimbus-"));
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&veth),
        "host veth removed"
    );
    assert!(!nat_rules().contains(&subnet), "NAT rule removed");
}

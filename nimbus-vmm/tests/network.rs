//! Per-VM networking for real: with `egress` the guest reaches a server on the
//! host through its tap, namespace and NAT; `isolated` has the same tap and no way
//! out; either way the namespace is gone with the VM. Needs root, iproute2 and
//! iptables (scripts/guest-assets.sh installs them); QEMU and the sandbox both run.

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
use nimbus_vmm::{DriverKind, JobEvent, Outcome, VmmDriver};

fn ready() -> Option<PathBuf> {
    let assets = std::env::var_os("NIMBUS_TEST_ASSETS").map(PathBuf::from);
    let root = nix::unistd::Uid::effective().is_root();
    let iptables = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok();
    match (assets, root && iptables) {
        (Some(assets), true) => Some(assets),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the network test needs NIMBUS_TEST_ASSETS, root and iptables under CI=true")
        }
        _ => {
            eprintln!("skipping: needs NIMBUS_TEST_ASSETS, root and iptables");
            None
        }
    }
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

async fn fetch_from_guest(
    driver: Arc<dyn VmmDriver>,
    kind: DriverKind,
    network: NetworkSpec,
) -> (Outcome, Vec<String>) {
    let assets = AssetSet::open(&ready().expect("checked"))
        .expect("assets")
        .verify(kind, None)
        .expect("verified");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
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
        Duration::from_secs(60),
    );
    spec.boot_timeout = Duration::from_secs(90);
    let url = format!("http://{}:{port}/", host_address());
    let job = GuestJob::from_commands(&[format!("curl -s -m 5 {url} || echo unreachable")]);
    let mut lines = Vec::new();
    let mut on_event = |event: JobEvent| {
        if let JobEvent::Output(line) = event {
            lines.push(line.line);
        }
    };
    let (_, report) = launch::run_once(&driver, &spec, &job, &mut |_| {}, &mut on_event)
        .await
        .expect("runs");
    server.abort();
    (report.outcome, lines)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_egress_reaches_the_host_and_isolated_does_not() {
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
    let (outcome, lines) = fetch_from_guest(
        driver.clone(),
        DriverKind::Qemu,
        NetworkSpec::Tap { egress: true },
    )
    .await;
    assert_eq!(
        (outcome, lines),
        (Outcome::Exited { code: 0 }, vec!["pong".to_string()])
    );
    let (outcome, lines) =
        fetch_from_guest(driver, DriverKind::Qemu, NetworkSpec::Tap { egress: false }).await;
    assert_eq!(
        (outcome, lines),
        (Outcome::Exited { code: 0 }, vec!["unreachable".to_string()])
    );
    assert!(
        !namespaces().contains("nimbus-"),
        "VM namespaces are removed: {}",
        namespaces()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_egress_shares_the_host_network_and_isolated_has_none() {
    if ready().is_none() {
        return;
    }
    let runtime_dir =
        std::env::temp_dir().join(format!("nimbus-net-sandbox-{}", std::process::id()));
    let driver: Arc<dyn VmmDriver> = Arc::new(SandboxDriver::new(SandboxConfig { runtime_dir }));
    let (outcome, lines) = fetch_from_guest(
        driver.clone(),
        DriverKind::Sandbox,
        NetworkSpec::Tap { egress: true },
    )
    .await;
    assert_eq!(
        (outcome, lines),
        (Outcome::Exited { code: 0 }, vec!["pong".to_string()])
    );
    let (outcome, lines) = fetch_from_guest(
        driver,
        DriverKind::Sandbox,
        NetworkSpec::Tap { egress: false },
    )
    .await;
    assert_eq!(
        (outcome, lines),
        (Outcome::Exited { code: 0 }, vec!["unreachable".to_string()])
    );
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
    let network = VmNetwork::create(&vm_id, true).await.expect("network");
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

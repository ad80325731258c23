//! Hosts that stand in for what a job must not reach (a cloud's metadata service
//! at 169.254.169.254, a private network's server) and for the internet it may
//! reach (an address in a documentation range), all on this machine: a network
//! namespace of the test's own joined to the host by a veth pair, with one small
//! HTTP server per address. Traffic to them never leaves the machine, so tests can
//! prove what is refused without sending anything anywhere. Needs root, iproute2
//! and python3 (the servers).

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The metadata service's well-known address.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// A server of a private network (RFC 1918).
pub const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// "The internet": an address no default rule denies (TEST-NET-3).
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// The stand-ins, removed on drop. Each answers `GET /` with its own name. One set
/// at a time per process (they use the same addresses): `start` waits its turn.
pub struct StandIns {
    namespace: String,
    host_veth: String,
    servers: Vec<Child>,
    _pages: tempfile_dir::Dir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The addresses (stand-in, host side) of the three /30 links.
const LINKS: [(Ipv4Addr, Ipv4Addr, &str); 3] = [
    (METADATA, Ipv4Addr::new(169, 254, 169, 253), "metadata"),
    (PRIVATE, Ipv4Addr::new(10, 250, 0, 1), "private"),
    (PUBLIC, Ipv4Addr::new(203, 0, 113, 9), "public"),
];

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl StandIns {
    /// Starts the three stand-ins (names unique to this process).
    pub fn start() -> Result<StandIns, String> {
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tag = format!("{:x}", std::process::id());
        let namespace = format!("nimbus-standin-{tag}");
        let host_veth = format!("nsi{tag}");
        let pages = tempfile_dir::Dir::new(&format!("nimbus-standin-pages-{tag}"))?;
        let mut stand_ins = StandIns {
            namespace: namespace.clone(),
            host_veth: host_veth.clone(),
            servers: Vec::new(),
            _pages: pages,
            _turn: turn,
        };
        // What a killed test run left behind goes first.
        let _ = run("ip", &["link", "del", &host_veth]);
        let _ = run("ip", &["netns", "del", &namespace]);
        run("ip", &["netns", "add", &namespace])?;
        run(
            "ip",
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "standin0", "netns",
                &namespace,
            ],
        )?;
        run(
            "ip",
            &["netns", "exec", &namespace, "ip", "link", "set", "lo", "up"],
        )?;
        for (stand_in, host, _) in LINKS {
            run(
                "ip",
                &["addr", "add", &format!("{host}/30"), "dev", &host_veth],
            )?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &namespace,
                    "ip",
                    "addr",
                    "add",
                    &format!("{stand_in}/30"),
                    "dev",
                    "standin0",
                ],
            )?;
        }
        run("ip", &["link", "set", &host_veth, "up"])?;
        run(
            "ip",
            &[
                "netns", "exec", &namespace, "ip", "link", "set", "standin0", "up",
            ],
        )?;
        for (stand_in, _, name) in LINKS {
            let dir = stand_ins._pages.path().join(name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("index.html"), name).map_err(|e| e.to_string())?;
            let server = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &namespace,
                    "python3",
                    "-m",
                    "http.server",
                    "80",
                    "--bind",
                ])
                .arg(stand_in.to_string())
                .arg("--directory")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting the {name} stand-in: {e}"))?;
            stand_ins.servers.push(server);
        }
        // Up when the host itself reaches every one (the host is not filtered).
        let deadline = Instant::now() + Duration::from_secs(20);
        for (stand_in, _, name) in LINKS {
            while StandIns::fetch(stand_in).as_deref() != Some(name) {
                if Instant::now() > deadline {
                    return Err(format!("the {name} stand-in at {stand_in} did not come up"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(stand_ins)
    }

    /// `GET http://address/` from the host: the stand-in's name, if it answered.
    pub fn fetch(address: Ipv4Addr) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect_timeout(&(address, 80).into(), Duration::from_millis(500))
                .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(format!("GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer
            .split("\r\n\r\n")
            .nth(1)
            .map(|body| body.trim().to_string())
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = run("ip", &["link", "del", &self.host_veth]);
        let _ = run("ip", &["netns", "del", &self.namespace]);
    }
}

/// A temporary directory removed on drop (the pages the servers serve).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Result<Dir, String> {
            let path = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Dir(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

//! Relays from inside a VM's network namespace to services on the host: the cache
//! proxy a job saves to and restores from is reached at the VM's gateway address
//! (`172.30.0.1:PORT`) and forwarded, as TCP, to where the agent reaches it. So a
//! job needs no route to the host at all — the egress policy refuses the host's
//! addresses outright — and a proxy listening on the host's loopback still serves it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::{Error, Result};

/// Connections one relay carries at once: a job cannot hold more of the host's
/// sockets than this through it.
const MAX_CONNECTIONS: usize = 256;

/// A listener in a VM's namespace forwarding to one host service; stops on drop.
#[derive(Debug)]
pub struct Relay {
    task: tokio::task::JoinHandle<()>,
    /// Where it listens, inside the namespace (`172.30.0.1:PORT`).
    pub listen: SocketAddrV4,
    /// The host service it forwards to (`host:port`).
    pub upstream: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `listen` inside the named network namespace. On a thread of its own:
/// `setns` moves only the calling thread, which must never serve anything else
/// afterwards (a tokio worker or blocking-pool thread would), and it ends here.
fn bind_in_namespace(
    namespace: PathBuf,
    listen: SocketAddrV4,
) -> std::io::Result<std::net::TcpListener> {
    let file = std::fs::File::open(&namespace)?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Relay {
    /// Listens on `address:port` in namespace `namespace` (a name under
    /// `/run/netns`) and forwards each connection to `upstream` (`host:port`).
    pub async fn start(
        namespace: &str,
        address: Ipv4Addr,
        port: u16,
        upstream: &str,
    ) -> Result<Relay> {
        let listen = SocketAddrV4::new(address, port);
        let path = PathBuf::from("/run/netns").join(namespace);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("nimbus-relay-bind".into())
            .spawn(move || {
                let _ = sender.send(bind_in_namespace(path, listen));
            })
            .map_err(Error::io("starting the relay's bind thread"))?;
        let listener = receiver
            .await
            .map_err(|_| Error::State("the relay's bind thread ended without an answer"))?
            .map_err(Error::io(format!(
                "listening on {listen} in namespace {namespace}"
            )))?;
        let listener =
            TcpListener::from_std(listener).map_err(Error::io("adopting the relay listener"))?;
        let targets: Vec<SocketAddr> = tokio::net::lookup_host(upstream)
            .await
            .map_err(Error::io(format!("resolving {upstream}")))?
            .collect();
        if targets.is_empty() {
            return Err(Error::Config(format!("{upstream} resolves to no address")));
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    drop(inbound); // over the bound: refused
                    continue;
                };
                let targets = targets.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Ok(mut outbound) = TcpStream::connect(&targets[..]).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Relay {
            task,
            listen,
            upstream: upstream.to_string(),
        })
    }
}

/// For an `http://host[:port]/path` URL: the `host:port` a relay forwards to and
/// the port. `None` for anything else (an `https` service keeps its own name, which
/// a relay at another address would break).
pub fn http_upstream(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next().filter(|a| !a.is_empty())?;
    if authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, port.parse::<u16>().ok()?)
        }
        _ => (authority, 80),
    };
    Some((format!("{host}:{port}"), port))
}

/// The same URL with its authority replaced by `address:port` (what the guest uses).
pub fn rewrite_authority(url: &str, address: Ipv4Addr, port: u16) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    Some(format!("http://{address}:{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_name_their_upstream() {
        assert_eq!(
            http_upstream("http://127.0.0.1:8001"),
            Some(("127.0.0.1:8001".into(), 8001))
        );
        assert_eq!(
            http_upstream("http://cache.internal/"),
            Some(("cache.internal:80".into(), 80))
        );
        assert_eq!(http_upstream("https://cache.example.com"), None);
        assert_eq!(http_upstream("http://user:pw@host:1"), None);
        assert_eq!(
            rewrite_authority(
                "http://127.0.0.1:8001/base",
                Ipv4Addr::new(172, 30, 0, 1),
                8001
            ),
            Some("http://172.30.0.1:8001/base".into())
        );
    }
}

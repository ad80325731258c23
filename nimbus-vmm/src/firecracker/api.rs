//! A client of Firecracker's REST API (HTTP/1.1 over the `--api-sock` Unix socket),
//! covering what Nimbus configures: machine, boot source, drives, network, vsock,
//! instance start, and the pause/snapshot/load calls behind warm starts.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::{Error, Result};

/// A client of one Firecracker process's API socket; each call opens a fresh connection.
#[derive(Debug, Clone)]
pub struct FirecrackerApi {
    socket: PathBuf,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, Serialize)]
pub struct MachineConfig {
    /// Virtual CPUs (at least 1).
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (hyper-threads) in the guest.
    pub smt: bool,
    /// Dirty-page tracking (needed only for diff snapshots).
    pub track_dirty_pages: bool,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, Serialize)]
pub struct BootSource {
    /// The ELF kernel, as Firecracker sees the path (inside the chroot when jailed).
    pub kernel_image_path: String,
    /// The kernel command line.
    pub boot_args: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The initramfs, if any, as Firecracker sees the path.
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    /// Firecracker's name for the drive, also the last part of the API path.
    pub drive_id: String,
    /// The disk image, as Firecracker sees the path.
    pub path_on_host: String,
    /// Whether the kernel gets it as `root=` (Nimbus's init mounts by label instead).
    pub is_root_device: bool,
    /// Attach the disk read-only.
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInterface {
    /// Firecracker's name for the interface, also the last part of the API path.
    pub iface_id: String,
    /// The tap device on the host side (in the VM's network namespace).
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The guest's MAC address; Firecracker picks one if `None`.
    pub guest_mac: Option<String>,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, Serialize)]
pub struct Vsock {
    /// The guest's vsock context id (3 or more; 2 is the host).
    pub guest_cid: u32,
    /// Unix socket on the host; a guest connection to port N arrives at `<uds_path>_N`.
    pub uds_path: String,
}

impl FirecrackerApi {
    /// A client of the API at `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FirecrackerApi {
            socket: socket.into(),
        }
    }

    /// The API socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One request; 2xx is success, anything else an error carrying the
    /// `fault_message` Firecracker answered with.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(Error::io(format!(
                "connecting to the Firecracker API at {}",
                self.socket.display()
            )))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http_error(&method, path, e))?;
        tokio::spawn(connection);
        let payload = match &body {
            Some(value) => Bytes::from(value.to_string()),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(payload))
            .map_err(|e| self.http_error(&method, path, e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.http_error(&method, path, e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http_error(&method, path, e))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(Error::FirecrackerApi {
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                message: value
                    .get("fault_message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string()),
            })
        }
    }

    fn http_error(&self, method: &Method, path: &str, error: impl std::fmt::Display) -> Error {
        Error::FirecrackerApi {
            method: method.to_string(),
            path: path.to_string(),
            status: StatusCode::BAD_GATEWAY.as_u16(),
            message: format!("HTTP over {}: {error}", self.socket.display()),
        }
    }

    async fn put(&self, path: &str, body: impl Serialize) -> Result<()> {
        let body = serde_json::to_value(body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(Method::PUT, path, Some(body)).await.map(drop)
    }

    /// `PUT /machine-config`: vCPUs and memory.
    pub async fn machine_config(&self, config: &MachineConfig) -> Result<()> {
        self.put("/machine-config", config).await
    }

    /// `PUT /boot-source`: kernel, command line and initramfs.
    pub async fn boot_source(&self, source: &BootSource) -> Result<()> {
        self.put("/boot-source", source).await
    }

    /// `PUT /drives/{drive_id}`: attaches a disk.
    pub async fn drive(&self, drive: &Drive) -> Result<()> {
        self.put(&format!("/drives/{}", drive.drive_id), drive)
            .await
    }

    /// `PUT /network-interfaces/{iface_id}`: attaches a tap device.
    pub async fn network_interface(&self, iface: &NetworkInterface) -> Result<()> {
        self.put(&format!("/network-interfaces/{}", iface.iface_id), iface)
            .await
    }

    /// `PUT /vsock`: the guest's vsock device and its host-side socket.
    pub async fn vsock(&self, vsock: &Vsock) -> Result<()> {
        self.put("/vsock", vsock).await
    }

    /// Boots the configured VM (`InstanceStart`).
    pub async fn instance_start(&self) -> Result<()> {
        self.put("/actions", json!({"action_type": "InstanceStart"}))
            .await
    }

    /// Sends Ctrl+Alt+Del, Firecracker's way to ask the guest to shut down (`SendCtrlAltDel`).
    pub async fn send_ctrl_alt_del(&self) -> Result<()> {
        self.put("/actions", json!({"action_type": "SendCtrlAltDel"}))
            .await
    }

    /// Pauses the VM's vCPUs (`PATCH /vm`).
    pub async fn pause(&self) -> Result<()> {
        self.call(Method::PATCH, "/vm", Some(json!({"state": "Paused"})))
            .await
            .map(drop)
    }

    /// Resumes a paused VM (`PATCH /vm`).
    pub async fn resume(&self) -> Result<()> {
        self.call(Method::PATCH, "/vm", Some(json!({"state": "Resumed"})))
            .await
            .map(drop)
    }

    /// Pauses the VM and writes a full snapshot (state + memory) for warm starts.
    pub async fn snapshot_create(&self, snapshot_path: &str, mem_file_path: &str) -> Result<()> {
        self.pause().await?;
        self.put(
            "/snapshot/create",
            json!({"snapshot_type": "Full", "snapshot_path": snapshot_path, "mem_file_path": mem_file_path}),
        )
        .await
    }

    /// Loads a snapshot into a fresh (unconfigured) Firecracker and resumes it.
    pub async fn snapshot_load(&self, snapshot_path: &str, mem_file_path: &str) -> Result<()> {
        self.put(
            "/snapshot/load",
            json!({
                "snapshot_path": snapshot_path,
                "mem_backend": {"backend_type": "File", "backend_path": mem_file_path},
                "resume_vm": true
            }),
        )
        .await
    }
}

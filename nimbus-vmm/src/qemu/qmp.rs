//! A minimal client of QEMU's machine protocol (QMP) over its Unix socket: JSON
//! lines, a greeting, `qmp_capabilities`, then one command at a time. Events that
//! arrive between a command and its answer are skipped. What snapshots need: stop,
//! migrate to a file, restore from one, continue.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::{Error, Result};

/// An open QMP session with one QEMU.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

fn qmp_error(message: impl Into<String>) -> Error {
    Error::Command {
        command: "qemu QMP".into(),
        message: message.into(),
    }
}

impl Qmp {
    /// Connects to `socket` (retrying until `deadline`: QEMU creates it as it starts)
    /// and negotiates capabilities.
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Self> {
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => break stream,
                Err(error) if Instant::now() >= deadline => {
                    return Err(qmp_error(format!(
                        "connecting to {}: {error}",
                        socket.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (reader, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = qmp.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_error(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(Error::io("reading from QMP"))?;
        if n == 0 {
            return Err(qmp_error("QEMU closed the QMP socket"));
        }
        serde_json::from_str(&line).map_err(|e| qmp_error(format!("bad QMP answer {line:?}: {e}")))
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut request = json!({ "execute": command, "arguments": arguments }).to_string();
        request.push('\n');
        self.writer
            .write_all(request.as_bytes())
            .await
            .map_err(Error::io("writing to QMP"))?;
        loop {
            let mut answer = self.read().await?;
            if answer.get("event").is_some() {
                continue;
            }
            if let Some(error) = answer.get("error") {
                let description = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(qmp_error(format!("{command}: {description}")));
            }
            return Ok(answer
                .get_mut("return")
                .map(Value::take)
                .unwrap_or(Value::Null));
        }
    }

    /// Turns on migration's `x-ignore-shared`: RAM in a shared file backend is not
    /// copied into the stream (the snapshot's memory is that file).
    pub async fn ignore_shared_memory(&mut self) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
        )
        .await
        .map(drop)
    }

    /// Polls `query-migrate` until the migration ends; fails unless it completed.
    pub async fn wait_for_migration(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let state = self.execute("query-migrate", json!({})).await?;
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let reason = state
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(qmp_error(format!("migration failed: {reason}")));
                }
                _ if Instant::now() >= deadline => {
                    return Err(qmp_error("migration did not finish in time"))
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// Polls until the VM runs, continuing it once an incoming migration left it
    /// paused (a snapshot is saved paused).
    pub async fn run_after_incoming(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let status = self.execute("query-status", json!({})).await?;
            if status.get("running").and_then(Value::as_bool) == Some(true) {
                return Ok(());
            }
            match status.get("status").and_then(Value::as_str) {
                Some("paused") | Some("postmigrate") => {
                    self.execute("cont", json!({})).await?;
                    continue;
                }
                Some("inmigrate") | Some("prelaunch") | Some("restore-vm") => {}
                Some(other) => {
                    return Err(qmp_error(format!(
                        "the restored VM is {other}, not running"
                    )))
                }
                None => return Err(qmp_error(format!("bad query-status answer {status}"))),
            }
            if Instant::now() >= deadline {
                return Err(qmp_error("the restored VM did not start in time"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

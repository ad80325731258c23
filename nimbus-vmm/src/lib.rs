//! `nimbus-vmm`: one fresh, isolated machine per job behind the [`VmmDriver`] trait.
//!
//! - [`protocol`]: the framed, versioned host ⇄ guest protocol (always built: the
//!   guest binary uses it too);
//! - [`guest`] (feature `guest`): the in-guest agent behind `bins/nimbus-guest`;
//! - host side (feature `host`, default): the drivers [`qemu`] (QEMU microvm, KVM or
//!   TCG), [`firecracker`] (API over its Unix socket, optional jailer) and
//!   [`sandbox`] (Linux namespaces, no KVM needed), driver choice in [`select`],
//!   guest [`assets`] (build and sha256 attestation) and the host half of the
//!   protocol in [`session`].
//!
//! A VM's life: [`VmmDriver::prepare`] lays out its private files → [`Vm::boot`]
//! starts it and waits for the guest's hello → [`Vm::run`] runs one job, streaming
//! [`JobEvent`]s → [`Vm::destroy`] kills it and removes every file (idempotent; also
//! what a dropped or timed-out VM gets).

#![warn(missing_docs)]

pub mod protocol;

#[cfg(feature = "guest")]
pub mod guest;

#[cfg(feature = "host")]
pub mod agent;
#[cfg(feature = "host")]
pub mod assets;
#[cfg(feature = "host")]
pub mod doctor;
#[cfg(feature = "host")]
pub mod error;
#[cfg(feature = "host")]
pub mod firecracker;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod launch;
#[cfg(feature = "host")]
pub mod network;
#[cfg(feature = "host")]
pub mod qemu;
#[cfg(feature = "host")]
pub mod runtime;
#[cfg(feature = "host")]
pub mod sandbox;
#[cfg(feature = "host")]
pub mod select;
#[cfg(feature = "host")]
pub mod session;
#[cfg(feature = "host")]
pub mod snapshot;
#[cfg(feature = "host")]
pub mod spec;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod workflow;

#[cfg(feature = "host")]
pub use error::{Error, Result};
#[cfg(feature = "host")]
pub use spec::{DriverKind, GuestInfo, JobEvent, JobReport, Outcome, Probe, StepReport, VmSpec};

#[cfg(feature = "host")]
use async_trait::async_trait;

/// A hypervisor (or sandbox) that gives every job a machine of its own.
#[cfg(feature = "host")]
#[async_trait]
pub trait VmmDriver: Send + Sync {
    /// Which driver this is, for logs, metrics and the guest info.
    fn kind(&self) -> DriverKind;
    /// Checks the host (KVM, binaries, permissions) without booting anything.
    async fn probe(&self) -> Probe;
    /// Creates the VM's private files (copy-on-write rootfs, scratch disk) under its
    /// runtime directory. Nothing runs yet; [`Vm::destroy`] removes it all.
    async fn prepare(&self, spec: &VmSpec) -> Result<Box<dyn Vm>>;
    /// Makes, or finds already made, the snapshot VMs of `spec`'s machine start from
    /// (`NIMBUS_VMM_START=snapshot`): boots one, primes it and saves it, tied to the
    /// assets (`assets_sha256`, the manifest's digest) and the VMM's version. A spec
    /// naming it in [`VmSpec::snapshot`] is then restored instead of booted.
    async fn snapshot(&self, spec: &VmSpec, assets_sha256: &str) -> Result<snapshot::Snapshot> {
        let _ = (spec, assets_sha256);
        Err(Error::Unavailable {
            driver: self.kind().as_str(),
            reason: "this driver cannot restore VMs from snapshots".into(),
        })
    }
}

/// One machine, from prepared to destroyed.
#[cfg(feature = "host")]
#[async_trait]
pub trait Vm: Send {
    /// The VM's id, as given in its [`VmSpec`]; unique on this host.
    fn id(&self) -> &str;
    /// Starts the machine and returns once `nimbus-guest` inside has said hello.
    async fn boot(&mut self) -> Result<GuestInfo>;
    /// Readies a booted VM for a job that comes later (the host agent's warm pool):
    /// the guest loads what jobs start with, so the job's first command starts
    /// sooner. Guests too old for it are left as they are.
    async fn prime(&mut self) -> Result<()>;
    /// Sets the timeout of the next [`Vm::run`], replacing the spec's: a VM of the
    /// host agent's warm pool is booted before its job, and so its timeout, is known.
    fn set_timeout(&mut self, timeout: std::time::Duration);
    /// Runs one job, handing every step and output line to `on_event`. The spec's
    /// timeout covers the run: on expiry the machine is destroyed and the outcome is
    /// [`Outcome::TimedOut`].
    async fn run(
        &mut self,
        job: &protocol::GuestJob,
        on_event: &mut (dyn FnMut(JobEvent) + Send),
    ) -> Result<JobReport>;
    /// Kills the machine and removes its files. Safe to call more than once and
    /// after any earlier step failed.
    async fn destroy(&mut self) -> Result<()>;
}

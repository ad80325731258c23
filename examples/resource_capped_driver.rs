//! A custom `VmmDriver` wrapper: a resource policy in front of any driver. Every
//! VM is capped at 2 vCPUs and 2 GiB, and at most N run at once (the rest wait);
//! the wrapped driver does the real work. With built assets it runs a job through
//! the wrapper; without, it only probes.
//!
//! `NIMBUS_ASSETS_DIR=/var/tmp/nimbus-assets NIMBUS_VMM=sandbox \
//!   cargo run -p nimbus-examples --example resource_capped_driver`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::Env;
use nimbus_vmm::protocol::GuestJob;
use nimbus_vmm::select::VmmConfig;
use nimbus_vmm::{
    launch, DriverKind, GuestInfo, JobEvent, JobReport, Probe, Result, Vm, VmSpec, VmmDriver,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

struct ResourceCapped {
    inner: Arc<dyn VmmDriver>,
    max_vcpus: u32,
    max_memory_mib: u32,
    running: Arc<Semaphore>,
}

/// A VM of the wrapped driver holding one of the wrapper's slots until dropped.
struct CappedVm {
    inner: Box<dyn Vm>,
    _slot: OwnedSemaphorePermit,
}

#[async_trait]
impl Vm for CappedVm {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn boot(&mut self) -> Result<GuestInfo> {
        self.inner.boot().await
    }
    fn set_timeout(&mut self, timeout: std::time::Duration) {
        self.inner.set_timeout(timeout)
    }
    async fn prime(&mut self) -> Result<()> {
        self.inner.prime().await
    }
    async fn run(
        &mut self,
        job: &GuestJob,
        on_event: &mut (dyn FnMut(JobEvent) + Send),
    ) -> Result<JobReport> {
        self.inner.run(job, on_event).await
    }
    async fn destroy(&mut self) -> Result<()> {
        self.inner.destroy().await
    }
}

#[async_trait]
impl VmmDriver for ResourceCapped {
    fn kind(&self) -> DriverKind {
        self.inner.kind()
    }
    async fn probe(&self) -> Probe {
        self.inner.probe().await
    }
    async fn prepare(&self, spec: &VmSpec) -> Result<Box<dyn Vm>> {
        // Wait for a slot first: the policy limits VMs, not just sizes.
        let slot = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| nimbus_vmm::Error::Config("the wrapper is shutting down".into()))?;
        let mut capped = spec.clone();
        capped.vcpus = capped.vcpus.min(self.max_vcpus);
        capped.memory_mib = capped.memory_mib.min(self.max_memory_mib);
        let inner = self.inner.prepare(&capped).await?;
        Ok(Box::new(CappedVm { inner, _slot: slot }))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let env = Env::from_process()?;
    let config = VmmConfig::from_env(&env)?;
    let selection = nimbus_vmm::select::select(&config).await?;
    let driver: Arc<dyn VmmDriver> = Arc::new(ResourceCapped {
        inner: selection.driver,
        max_vcpus: 2,
        max_memory_mib: 2048,
        running: Arc::new(Semaphore::new(2)),
    });
    let probe = driver.probe().await;
    println!("wrapped driver: {} ({})", driver.kind(), selection.reason);
    println!("available: {} — {}", probe.available, probe.reason);
    if !config
        .assets_dir
        .join(nimbus_vmm::assets::MANIFEST)
        .is_file()
    {
        println!(
            "no assets in {}: build them to run a job",
            config.assets_dir.display()
        );
        return Ok(());
    }
    let assets = launch::verified_assets(&config, driver.kind()).await?;
    let mut spec = launch::spec(&config, &assets, "capped-example", Duration::from_secs(60));
    spec.vcpus = 64; // asks for too much: the wrapper caps it
    spec.memory_mib = 65_536;
    let job = GuestJob::from_commands(&["nproc", "echo capped"]);
    let (_, report) = launch::run_once(&driver, &spec, &job, &mut |_| {}, &mut |event| {
        if let JobEvent::Output(line) = event {
            println!("guest: {}", line.line);
        }
    })
    .await?;
    println!("outcome: {:?}", report.outcome);
    Ok(())
}

//! The initramfs: a static busybox, the kernel modules the guest needs before it
//! can see its disks (Debian's cloud kernel builds virtio as modules), and an
//! `/init` that loads them, mounts the rootfs and the scratch disk by label and
//! switches into the rootfs's `/sbin/nimbus-init`.
//!
//! Kept uncompressed: under TCG the guest decompresses at emulated speed, while the
//! host hands QEMU the bytes at memory speed.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::Path;

use cpio::newc::Builder;

use crate::{Error, Result};

/// Modules the guest loads before switching root, by module name, in groups: the
/// base set always, `net` only for a VM with a network device (`nimbus.net=`),
/// `vsock` only under Firecracker (`nimbus.transport=vsock`). Every insmod costs
/// tens of milliseconds under TCG, so nothing is loaded that the VM cannot use.
pub const MODULE_GROUPS: &[(&str, &[&str])] = &[
    (
        "base",
        &["virtio_mmio", "virtio_blk", "virtio_console", "ext4"],
    ),
    ("net", &["virtio_net"]),
    ("vsock", &["vmw_vsock_virtio_transport"]),
];

const INIT: &str = r#"#!/bin/sh
# nimbus initramfs: load virtio modules, mount the rootfs and scratch by label,
# switch into the rootfs. Any failure is printed to the console and powers off.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() { echo "nimbus-initramfs: $*"; echo o > /proc/sysrq-trigger; sleep 10; }
load() { while read -r module; do insmod "/lib/modules/$module" 2>/dev/null; done < "/lib/modules/$1.order"; }
read -r cmdline < /proc/cmdline
load base
case " $cmdline " in *" nimbus.net="*) load net ;; esac
case " $cmdline " in *" nimbus.transport=vsock"*) load vsock ;; esac
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  root=$(findfs LABEL=nimbus-root 2>/dev/null) && break
  sleep 0.05
done
[ -n "$root" ] || fail "no disk labelled nimbus-root"
mount -t ext4 -o noatime "$root" /newroot || fail "cannot mount $root"
if scratch=$(findfs LABEL=nimbus-scratch 2>/dev/null); then
  mount -t ext4 -o noatime "$scratch" /newroot/scratch || fail "cannot mount the scratch disk"
else
  mount -t tmpfs -o mode=0755 tmpfs /newroot/scratch
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/nimbus-init
fail "switch_root failed"
"#;

/// Busybox applets the init uses.
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "findfs",
    "switch_root",
    "sleep",
    "echo",
];

/// Module files (relative to `lib/modules/KVER/`) in load order: dependencies first,
/// built-in modules left out.
pub fn load_order(
    modules_dep: &str,
    modules_builtin: &str,
    wanted: &[&str],
) -> Result<Vec<String>> {
    let name_of = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split('.').next().unwrap_or(file).replace('-', "_")
    };
    let builtin: HashSet<String> = modules_builtin.lines().map(|l| name_of(l.trim())).collect();
    // modules.dep: "path.ko: dep1.ko dep2.ko" — deps listed so that loading them
    // right to left works (what modprobe does).
    let mut deps = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            let list: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(name_of(module), (module.trim().to_string(), list));
        }
    }
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for want in wanted {
        let want = want.replace('-', "_");
        if builtin.contains(&want) {
            continue;
        }
        let (path, list) = deps.get(&want).ok_or_else(|| {
            Error::Assets(format!(
                "kernel module {want} is neither built in nor in modules.dep"
            ))
        })?;
        for dep in list.iter().rev().chain(std::iter::once(path)) {
            if seen.insert(dep.clone()) {
                order.push(dep.clone());
            }
        }
    }
    Ok(order)
}

/// Writes the initramfs to `out`; returns the modules it loads.
pub fn build(kernel_modules: &Path, busybox: &Path, out: &Path) -> Result<Vec<String>> {
    let read = |name: &str| {
        std::fs::read_to_string(kernel_modules.join(name)).map_err(Error::io(format!(
            "reading {}/{name}",
            kernel_modules.display()
        )))
    };
    let (dep, builtin) = (read("modules.dep")?, read("modules.builtin")?);
    // Each group lists only what the groups before it did not load.
    let mut loaded: Vec<String> = Vec::new();
    let mut groups = Vec::new();
    for (group, wanted) in MODULE_GROUPS {
        let order: Vec<String> = load_order(&dep, &builtin, wanted)?
            .into_iter()
            .filter(|module| !loaded.contains(module))
            .collect();
        loaded.extend(order.iter().cloned());
        groups.push((*group, order));
    }

    let mut entries: Vec<(Builder, Cursor<Vec<u8>>)> = Vec::new();
    let dir = |name: &str| {
        (
            Builder::new(name).mode(0o040755).nlink(2),
            Cursor::new(Vec::new()),
        )
    };
    for name in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        entries.push(dir(name));
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    entries.push((
        Builder::new("dev/console")
            .mode(0o020600)
            .rdev_major(5)
            .rdev_minor(1),
        Cursor::new(Vec::new()),
    ));
    let busybox_bytes =
        std::fs::read(busybox).map_err(Error::io(format!("reading {}", busybox.display())))?;
    entries.push((
        Builder::new("bin/busybox").mode(0o100755),
        Cursor::new(busybox_bytes),
    ));
    for applet in APPLETS {
        entries.push((
            Builder::new(&format!("bin/{applet}")).mode(0o120777),
            Cursor::new(b"busybox".to_vec()),
        ));
    }
    entries.push((
        Builder::new("init").mode(0o100755),
        Cursor::new(INIT.as_bytes().to_vec()),
    ));
    for (group, order) in &groups {
        let mut list = String::new();
        for module in order {
            let file = module.rsplit('/').next().unwrap_or(module);
            let bytes = std::fs::read(kernel_modules.join(module))
                .map_err(Error::io(format!("reading module {module}")))?;
            entries.push((
                Builder::new(&format!("lib/modules/{file}")).mode(0o100644),
                Cursor::new(bytes),
            ));
            list.push_str(file);
            list.push('\n');
        }
        entries.push((
            Builder::new(&format!("lib/modules/{group}.order")).mode(0o100644),
            Cursor::new(list.into_bytes()),
        ));
    }

    let file =
        std::fs::File::create(out).map_err(Error::io(format!("creating {}", out.display())))?;
    let writer = std::io::BufWriter::new(file);
    let mut writer = cpio::write_cpio(entries.into_iter(), writer)
        .map_err(Error::io(format!("writing {}", out.display())))?;
    std::io::Write::flush(&mut writer).map_err(Error::io(format!("writing {}", out.display())))?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_builtins_are_skipped() {
        let dep = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio.ko:\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let builtin = "kernel/fs/ext4/ext4.ko\n";
        let order =
            load_order(dep, builtin, &["virtio_mmio", "virtio-blk", "ext4"]).expect("order");
        assert_eq!(
            order,
            vec![
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_mmio.ko",
                "kernel/drivers/block/virtio_blk.ko",
            ]
        );
        assert!(load_order(dep, builtin, &["nonexistent"]).is_err());
    }
}

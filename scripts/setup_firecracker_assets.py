#!/usr/bin/env python3
"""Builds the guest assets a Firecracker host boots into a directory of your choice,
checks them, and prints the host agent settings that point at them.

    python3 scripts/setup_firecracker_assets.py ./artifacts
    python3 scripts/setup_firecracker_assets.py ./artifacts --actions-runner actions-runner-linux-x64-2.321.0.tar.gz

It is `nimbus assets build DIR` (kernel, initramfs, rootfs from Debian packages, the
static guest agent, the ELF `vmlinux` Firecracker boots; every file's sha256 in
`manifest.json`) followed by `nimbus assets verify DIR`. The `nimbus` binary is taken
from --nimbus, else PATH; in a checkout without one, it and the static guest agent
are built first (scripts/build-guest.sh). Needs root for debootstrap and the
image build, like `nimbus assets build` (docs/vm.md, "Assets").
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def log(message):
    print(f"setup_firecracker_assets: {message}", file=sys.stderr, flush=True)


def run(command, **kwargs):
    log("$ " + " ".join(command))
    return subprocess.run(command, check=True, **kwargs)


def nimbus_and_guest(explicit):
    """The nimbus binary and the static guest to install (None: nimbus's default)."""
    if explicit:
        return explicit, None
    installed = shutil.which("nimbus")
    if installed:
        return installed, None
    if not os.path.exists(os.path.join(REPO, "Cargo.toml")):
        sys.exit("setup_firecracker_assets: no `nimbus` on PATH and no checkout to build it from (--nimbus PATH)")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", "/var/tmp/nimbus-target")
    guest = run([os.path.join(REPO, "scripts", "build-guest.sh")], cwd=REPO, env=env,
                stdout=subprocess.PIPE, text=True).stdout.strip()
    run(["cargo", "build", "-q", "-p", "nimbus"], cwd=REPO, env=env)
    return os.path.join(env["CARGO_TARGET_DIR"], "debug", "nimbus"), guest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="where the assets go (created)")
    parser.add_argument("--nimbus", help="the nimbus binary (default: PATH, else built here)")
    parser.add_argument("--actions-runner", metavar="TARBALL",
                        help="a GitHub Actions runner release to put at /opt/actions-runner (GitHub jobs need it)")
    parser.add_argument("--suite", help="Debian suite of the rootfs (default: the host's)")
    parser.add_argument("--mirror", help="Debian mirror for debootstrap (default: the host's apt source)")
    args = parser.parse_args()

    out = os.path.abspath(args.dir)
    nimbus, guest = nimbus_and_guest(args.nimbus)
    build = [nimbus, "assets", "build", out]
    if guest:
        build += ["--guest", guest]
    if args.actions_runner:
        build += ["--actions-runner", os.path.abspath(args.actions_runner)]
    if args.suite:
        build += ["--suite", args.suite]
    if args.mirror:
        build += ["--mirror", args.mirror]
    run(build, stdout=sys.stderr)
    run([nimbus, "assets", "verify", out], stdout=sys.stderr)

    manifest = json.load(open(os.path.join(out, "manifest.json"), encoding="utf-8"))
    files = manifest["files"]
    for needed in ("vmlinux", "initrd.img", "rootfs.ext4"):
        if needed not in files:
            sys.exit(f"setup_firecracker_assets: {out} has no {needed}: Firecracker cannot boot it")
    log(f"kernel {manifest.get('kernel_release', '?')}, Debian {manifest.get('debian_suite', '?')}; "
        f"add to /etc/nimbus/host-agent.env:")
    print(f"NIMBUS_ASSETS_DIR={out}")
    print(f"NIMBUS_ROOTFS_SHA256={files['rootfs.ext4']['sha256']}")


if __name__ == "__main__":
    main()

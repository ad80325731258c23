//! The deployment files (deploy/) hold together: every variable an example env file
//! sets is a setting some part reads (docs/configuration.md, itself generated from
//! the code), each unit's EnvironmentFile has its example, and production mode is
//! on in each. `systemd-analyze verify` checks the units themselves (scripts/test.sh).

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn env_files_set_only_documented_variables_and_match_the_units() {
    let documented = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs");
    let mut examples = 0;
    for unit in std::fs::read_dir(root().join("deploy/systemd"))
        .expect("units")
        .flatten()
    {
        let text = std::fs::read_to_string(unit.path()).expect("unit");
        let env_file = text
            .lines()
            .find_map(|l| l.strip_prefix("EnvironmentFile=/etc/nimbus/"))
            .unwrap_or_else(|| panic!("{:?} names no /etc/nimbus env file", unit.path()));
        let example = root().join("deploy/env").join(env_file);
        let text = std::fs::read_to_string(&example)
            .unwrap_or_else(|e| panic!("{env_file}: no example in deploy/env ({e})"));
        examples += 1;
        assert!(
            text.lines().any(|l| l == "NIMBUS_MODE=production"),
            "{env_file}"
        );
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            // systemd takes everything after `=` as the value: no trailing comments.
            assert!(
                !line.contains(" #"),
                "{env_file}: {line:?} has a trailing comment"
            );
            let name = line.split('=').next().unwrap_or_default();
            assert!(
                documented.contains(&format!("| `{name}` |")),
                "{env_file} sets {name}, which no part reads"
            );
        }
    }
    assert_eq!(examples, 4, "a unit and an env file per binary");
}

/// `scripts/install-security.sh` run for real, as root, in a throwaway mount
/// namespace (copies of /etc, empty /usr/local, /srv, /var/lib, a stand-in
/// /dev/kvm, no cgroup tree, a logging modprobe): from a Firecracker release
/// tarball laid out as upstream ships it, it installs firecracker and the jailer,
/// compiles the JSON seccomp filter with the release's seccompiler-bin, installs
/// the jailer wrapper with its sudoers rule, nimbus-privileged-setup.sh and the
/// unit, writes the agent's env file, runs the privileged set-up — and does it all
/// again unchanged. A JSON filter with nothing to compile it is refused.
#[test]
fn install_security_installs_what_it_promises() {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        assert!(
            nimbus_core::testsuite::setting("CI").is_none(),
            "CI runs as root: install-security.sh must be tested"
        );
        return;
    }
    let scratch = std::env::temp_dir().join(format!("nimbus-install-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let script = format!(
        r#"
set -euo pipefail
scratch={scratch}
repo={repo}
arch=$(uname -m)
mount --make-rprivate /
mkdir -p "$scratch/etc" "$scratch/fakebin"
cp -a /etc/. "$scratch/etc/"
mount --bind "$scratch/etc" /etc
for dir in /usr/local /srv /var/lib /sys/fs/cgroup; do mount -t tmpfs tmpfs "$dir"; done
touch "$scratch/kvm"; [[ -e /dev/kvm ]] && mount --bind "$scratch/kvm" /dev/kvm
printf '#!/bin/sh\necho "modprobe $*" >>{scratch}/modprobe.log\n' >"$scratch/fakebin/modprobe"
chmod +x "$scratch/fakebin/modprobe"
export PATH="$scratch/fakebin:$PATH"

# A Firecracker release as upstream packs it.
release="$scratch/release-v1.10.1-$arch"
mkdir -p "$release"
printf '#!/bin/sh\necho "Firecracker v1.10.1"\n' >"$release/firecracker-v1.10.1-$arch"
printf '#!/bin/sh\necho "Jailer v1.10.1"\n' >"$release/jailer-v1.10.1-$arch"
printf '#!/bin/sh\necho debug\n' >"$release/firecracker-v1.10.1-$arch.debug"
cat >"$release/seccompiler-bin-v1.10.1-$arch" <<'COMPILER'
#!/bin/sh
# Stand-in for Firecracker's compiler: checks its arguments, writes a marker.
[ "$1" = --input-file ] && [ "$3" = --target-arch ] && [ "$5" = --output-file ] || exit 9
printf 'BPF of %s for %s\n' "$(basename "$2")" "$4" >"$6"
COMPILER
chmod +x "$release"/*
tar -czf "$scratch/firecracker-v1.10.1-$arch.tgz" -C "$scratch" "release-v1.10.1-$arch"
echo '{{"vmm": {{"default_action": "trap", "filter_action": "allow", "filter": []}}}}' >"$scratch/seccomp-$arch.json"

cd "$repo"
for run in 1 2; do
  scripts/install-security.sh --release "$scratch/firecracker-v1.10.1-$arch.tgz" \
    --seccomp-filter "$scratch/seccomp-$arch.json" 2>>"$scratch/install.log"
done
[[ "$(/usr/local/bin/firecracker --version)" == "Firecracker v1.10.1" ]]
[[ "$(/usr/local/bin/jailer --version)" == "Jailer v1.10.1" ]]
[[ "$(cat /etc/nimbus/seccomp-$arch.bpf)" == "BPF of seccomp-$arch.json for $arch" ]]
grep -qx "SECCOMP_FILTER=/etc/nimbus/seccomp-$arch.bpf" /etc/nimbus/jailer.env
grep -qx "FIRECRACKER=/usr/local/bin/firecracker" /etc/nimbus/jailer.env
grep -qx "NIMBUS_SECCOMP_FILTER=/etc/nimbus/seccomp-$arch.bpf" /etc/nimbus/host-agent.env
grep -qx "NIMBUS_JAILER_BIN=/usr/local/libexec/nimbus/jailer-wrapper" /etc/nimbus/host-agent.env
[[ "$(stat -c '%a %U' /usr/local/libexec/nimbus/jailer-wrapper)" == "755 root" ]]
[[ "$(stat -c '%a %U' /usr/local/bin/nimbus-privileged-setup.sh)" == "755 root" ]]
[[ "$(stat -c '%a' /etc/sudoers.d/nimbus-jailer)" == 440 ]]
grep -q "^nimbus ALL=(root) NOPASSWD: /usr/local/libexec/nimbus/jailer-wrapper$" /etc/sudoers.d/nimbus-jailer
cmp -s deploy/systemd/nimbus-host-agent.service /etc/systemd/system/nimbus-host-agent.service
getent passwd nimbus >/dev/null && getent passwd nimbus-vm >/dev/null
id -nG nimbus | grep -qw kvm
if [[ -e /dev/kvm ]]; then [[ "$(stat -c '%a %G' /dev/kvm)" == "660 kvm" ]]; fi
[[ -d /srv/jailer && "$(stat -c '%U' /var/lib/nimbus/host-agent/vms)" == nimbus ]]
grep -q "modprobe tun" "$scratch/modprobe.log"
grep -q "ready: jailer chroot base /srv/jailer" "$scratch/install.log"
# JSON with no compiler at hand is refused, with the way out.
if scripts/install-security.sh --seccomp-filter "$scratch/seccomp-$arch.json" 2>"$scratch/refused.log"; then
  echo "a JSON filter was accepted without seccompiler-bin" >&2; exit 1
fi
grep -q "needs seccompiler-bin" "$scratch/refused.log"
echo installed-and-checked
"#,
        scratch = scratch.display(),
        repo = root().display(),
    );
    let sudoers = Path::new("/etc/sudoers.d/nimbus-jailer");
    let sudoers_before = sudoers.exists();
    let output = std::process::Command::new("unshare")
        .args(["--mount", "--fork", "bash", "-c", &script])
        .output()
        .expect("unshare");
    let log = std::fs::read_to_string(scratch.join("install.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        output.status.success()
            && String::from_utf8_lossy(&output.stdout).contains("installed-and-checked"),
        "{}\n{}\ninstall.log:\n{log}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Nothing leaked out of the namespace.
    assert_eq!(sudoers.exists(), sudoers_before);
}

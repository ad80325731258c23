#!/usr/bin/env python3
"""Runs every ```bash block of the README and docs/getting-started.md, as typed, the
way a newcomer meets them: in a fresh clone, with the defaults, in order.

A block runs in bash with the environment the earlier blocks of its file left (one
terminal per file, as a reader would use); it fails when any of its commands fails
(bash's ERR trap), including a `grep` that finds nothing in a pipeline. `# ...` lines
are the sample output and are not compared.

An HTML comment right above a block (invisible on GitHub) says what a reader does
around it:

  <!-- docs-check: serve URL -->             the block starts a server: it runs in the
                                              background (left running for the blocks
                                              after it) until URL answers 2xx
  <!-- docs-check: serve URL; first line -->  the same for only the block's first line
  <!-- docs-check: beside "CMD" URL -->       CMD, which the text before the block names,
                                              runs in the background first, in a fresh clone
  <!-- docs-check: allow-exit N -->           a command exiting N is what the block shows
  <!-- docs-check: skip REASON -->            not run; REASON is printed

Each file, and each `beside` (and a `serve` while a server runs), starts a new scene:
the servers of the previous one are stopped (Ctrl-C, then kill) and the checkout is
reset to a fresh clone's state, so the block sees what a newcomer following that
section would have. After the README's tour the check
also asks the API whether the tour's job succeeded with its line in the logs.

  scripts/docs-check.py [FILE.md ...]     # default: README.md docs/getting-started.md

The checkout lives in $NIMBUS_DOCS_CHECKOUT (default /var/tmp/nimbus-docs-checkout).
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DIRECTIVE = re.compile(r"<!--\s*docs-check:\s*(.*?)\s*-->")


def log(message):
    print(f"docs-check: {message}", file=sys.stderr, flush=True)


class Block:
    def __init__(self, path, line, text, directive):
        self.path, self.line, self.text, self.directive = path, line, text, directive

    def where(self):
        return f"{os.path.relpath(self.path, REPO)}:{self.line}"


def blocks_of(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            directive = None
            j = start - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0:
                match = DIRECTIVE.search(lines[j])
                if match:
                    directive = match.group(1)
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            found.append(Block(path, start + 1, "\n".join(body), directive))
        i += 1
    return found


def wait_ready(url, process, limit=1800):
    started = time.time()
    while time.time() - started < limit:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return True
        except Exception:
            pass
        time.sleep(1)
    return False


class Scene:
    """A clone of the repository and the servers running for it."""

    def __init__(self, root):
        # One checkout at a fixed path, reset to the commit under test for every
        # scene: as clean as a fresh clone (`git clean -ffdx`), while cargo's
        # fingerprints (paths and mtimes) stay valid from one run to the next.
        self.dir = root
        if not os.path.isdir(os.path.join(root, ".git")):
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run(["git", "clone", "-q", REPO, root], check=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
        subprocess.run(["git", "fetch", "-q", REPO, head], cwd=root, check=True)
        subprocess.run(["git", "reset", "-q", "--hard", head], cwd=root, check=True)
        subprocess.run(["git", "clean", "-q", "-ffdx"], cwd=root, check=True)
        self.servers = []
        self.env_file = os.path.join(tempfile.mkdtemp(prefix="nimbus-docs-env-"), "env")
        open(self.env_file, "w").close()

    def serve(self, command, url, where):
        logfile = open(f"{self.env_file}.server-{len(self.servers)}.log", "w")
        log(f"{where}: serving `{command}` until {url} answers")
        process = subprocess.Popen(
            ["bash", "-c", f"set -a; . {shlex.quote(self.env_file)}; set +a; {command}"],
            cwd=self.dir, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.servers.append((process, logfile))
        if not wait_ready(url, process):
            logfile.flush()
            tail = open(logfile.name, encoding="utf-8", errors="replace").read()[-4000:]
            raise SystemExit(f"{where}: `{command}` never served {url}:\n{tail}")

    def stop(self):
        for process, logfile in self.servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    raise SystemExit(f"a server of {self.dir} did not stop on Ctrl-C")
            logfile.close()
        self.servers = []

    def run(self, block, allowed_exits):
        allowed = " ".join(str(code) for code in sorted(allowed_exits))
        script = f"""
set -a; . {shlex.quote(self.env_file)}; set +a
set -o pipefail
__failed=0
__check() {{
  local code=$1
  for allowed in {allowed}; do [[ $code == "$allowed" ]] && return 0; done
  echo "docs-check: command failed with exit $code: $BASH_COMMAND" >&2
  __failed=1
}}
trap '__check $?' ERR
{block.text}
trap - ERR
export -p | grep -v ' __' > {shlex.quote(self.env_file)}.new
sed -e 's/^declare -x //' {shlex.quote(self.env_file)}.new | grep '=' > {shlex.quote(self.env_file)} || true
exit $__failed
"""
        log(f"{block.where()}: running")
        result = subprocess.run(["bash", "-c", script], cwd=self.dir)
        if result.returncode != 0:
            raise SystemExit(f"{block.where()}: the block failed (see above)")


def check_tour(scene):
    """The README's tour submitted job 1: it must have succeeded, its line logged."""
    env = {}
    for line in open(os.path.join(scene.dir, ".nimbus", "dev.env"), encoding="utf-8"):
        if "=" in line and not line.startswith("#"):
            key, value = line.strip().split("=", 1)
            env[key] = value.strip("'\"")
    headers = {"authorization": f"Bearer {env['NIMBUS_TOKEN']}"}
    status = None
    for _ in range(240):
        request = urllib.request.Request(f"{env['NIMBUS_CONTROL_PLANE_URL']}/api/jobs/1", headers=headers)
        status = json.load(urllib.request.urlopen(request, timeout=5))["status"]
        if status in ("succeeded", "failed", "timed_out", "cancelled"):
            break
        time.sleep(0.5)
    if status != "succeeded":
        raise SystemExit(f"the README tour's job ended {status}")
    request = urllib.request.Request(f"{env['NIMBUS_LOGS_URL']}/api/logs?job_id=1", headers=headers)
    lines = json.load(urllib.request.urlopen(request, timeout=5))["lines"]
    if not any("hello from a microVM" in line["message"] for line in lines):
        raise SystemExit(f"the tour's line is not in the logs: {lines}")
    log("the tour's job succeeded and its line is in the logs")


def main():
    files = sys.argv[1:] or ["README.md", "docs/getting-started.md"]
    # Where every script of the repository builds: reused across runs and checkouts.
    os.environ.setdefault("CARGO_TARGET_DIR", "/var/tmp/nimbus-target")
    root = os.environ.get("NIMBUS_DOCS_CHECKOUT", "/var/tmp/nimbus-docs-checkout")
    scene = None
    ran = skipped = 0
    try:
        for name in files:
            path = os.path.join(REPO, name)
            if scene is not None:
                scene.stop()
            scene = Scene(root)
            for block in blocks_of(path):
                directive = block.directive or ""
                allowed = {0}
                if directive.startswith("skip"):
                    log(f"{block.where()}: skipped: {directive[4:].strip()}")
                    skipped += 1
                    continue
                if directive.startswith("allow-exit"):
                    allowed.add(int(directive.split()[1]))
                if directive.startswith("serve"):
                    parts = [p.strip() for p in directive.split(";")]
                    url = parts[0].split()[1]
                    lines = [l for l in block.text.split("\n") if l.strip() and not l.lstrip().startswith("#")]
                    first_line = any(part.startswith("first line") for part in parts[1:])
                    command = lines[0] if first_line else "\n".join(lines)
                    command = re.sub(r"\s+#.*$", "", command)
                    if scene.servers:
                        scene.stop()
                        scene = Scene(root)
                    scene.serve(command, url, block.where())
                    ran += 1
                    if name == "README.md" and "dev up" in command:
                        scene.dev_up = True
                    continue
                if directive.startswith("beside"):
                    command, url = shlex.split(directive)[1:3]
                    scene.stop()
                    scene = Scene(root)
                    scene.serve(command, url, block.where())
                scene.run(block, allowed)
                ran += 1
                if getattr(scene, "dev_up", False) and "api/logs?job_id=1" in block.text:
                    check_tour(scene)
        log(f"ok: {ran} blocks ran as typed, {skipped} skipped")
    finally:
        if scene is not None:
            try:
                scene.stop()
            except SystemExit as error:
                log(str(error))


if __name__ == "__main__":
    main()

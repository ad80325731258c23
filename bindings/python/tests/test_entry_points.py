"""`python -m nimbus.<service>` runs the Rust services in the Python process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import nimbus

SECRET = "python-entry-points-secret-0123456789"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
        return response.status, response.read()


def start(module, tmp_path, *args):
    env = {**os.environ, "NIMBUS_JWT_SECRET": SECRET, "NIMBUS_DATA_DIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until_serving(process, url):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1].decode()
        try:
            return get(url)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize(
    "module, path",
    [
        ("nimbus.control_plane", "/healthz"),
        ("nimbus.logging_pipeline", "/healthz"),
        ("nimbus.cache_proxy", "/healthz"),
    ],
)
def test_a_service_serves_and_stops_cleanly_on_sigterm(module, path, tmp_path):
    port = free_port()
    process = start(module, tmp_path, "--listen", f"127.0.0.1:{port}")
    try:
        status, _ = wait_until_serving(process, f"http://127.0.0.1:{port}{path}")
        assert status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()


def test_the_control_plane_entry_point_is_the_real_api(tmp_path):
    port = free_port()
    process = start("nimbus.control_plane", tmp_path, "--listen", f"127.0.0.1:{port}")
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}/healthz")
        client = nimbus.ControlPlaneClient(f"http://127.0.0.1:{port}", nimbus.mint_token(SECRET, "admin"))
        client.upsert_org(5, "initech")
        assert [org["name"] for org in client.orgs()] == ["initech"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


@pytest.mark.parametrize(
    "module", ["nimbus.control_plane", "nimbus.cache_proxy", "nimbus.logging_pipeline", "nimbus.host_agent.main"]
)
def test_usage_and_bad_arguments(module, tmp_path):
    helped = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, timeout=30)
    assert helped.returncode == 0 and b"usage:" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", module, "--bogus"], capture_output=True, timeout=30)
    assert bad.returncode == 2 and b"--bogus" in bad.stderr


def test_a_bad_configuration_fails_with_its_variable(tmp_path):
    process = start("nimbus.control_plane", tmp_path, "--listen", "not-an-address")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert b"NIMBUS_CONTROL_PLANE_ADDR" in stderr

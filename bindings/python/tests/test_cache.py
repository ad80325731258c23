"""The cache proxy from Python: CacheClient against an embedded proxy, on its fs
backend and on a CacheBackend written in Python."""

import asyncio
import hashlib

import pytest

import nimbus

SHARED = "python-cache-shared-secret-0123456789"
JWT = "python-cache-jwt-secret-0123456789"


def settings(tmp_path):
    return {
        "NIMBUS_DATA_DIR": str(tmp_path),
        "NIMBUS_CACHE_SHARED_SECRET": SHARED,
        "NIMBUS_JWT_SECRET": JWT,
    }


def token(org_id=1, repo="acme/app", **kwargs):
    return nimbus.mint_cache_token(SHARED, org_id, repo, **kwargs)


def test_entries_round_trip_on_the_fs_backend(tmp_path):
    with nimbus.CacheProxy(settings(tmp_path)).start() as proxy:
        client = nimbus.CacheClient(proxy.base_url, token())
        data = b"compiled objects " * 1000
        stored = client.put("deps/linux-x64", data)
        assert stored == {"key": "deps/linux-x64", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert client.get("deps/linux-x64") == data
        assert client.get("missing") is None
        client.delete("deps/linux-x64")
        assert client.get("deps/linux-x64") is None
        client.delete("deps/linux-x64")  # a missing entry is not an error


def test_scopes_and_errors(tmp_path):
    with nimbus.CacheProxy(settings(tmp_path)).start() as proxy:
        nimbus.CacheClient(proxy.base_url, token(org_id=1)).put("shared-name", b"org one")
        other_org = nimbus.CacheClient(proxy.base_url, token(org_id=2))
        assert other_org.get("shared-name") is None, "another org's entry is a miss"
        reader = nimbus.CacheClient(proxy.base_url, token(read_only=True))
        assert reader.get("shared-name") == b"org one"
        with pytest.raises(nimbus.AuthError):
            reader.put("shared-name", b"overwrite")
        with pytest.raises(nimbus.AuthError):
            nimbus.CacheClient(proxy.base_url, "nct1.forged").get("shared-name")
        with pytest.raises(nimbus.InvalidInput, match="comma"):
            nimbus.CacheClient(proxy.base_url, token()).put("a,b", b"x")
        usage = nimbus.CacheClient(proxy.base_url, nimbus.mint_token(JWT, "admin")).usage()
        by_org = {org["org_id"]: org for org in usage["orgs"]}
        assert (by_org[1]["entries"], by_org[1]["hits"]) == (1, 1)
        assert (by_org[2]["entries"], by_org[2]["misses"]) == (0, 1), "org 2's miss is its own"


def test_a_python_backend_holds_the_bytes(tmp_path):
    backend = nimbus.MemoryCacheBackend()
    with nimbus.CacheProxy(settings(tmp_path), backend=backend).start() as proxy:
        client = nimbus.CacheClient(proxy.base_url, token())
        data = bytes(range(256)) * 64
        client.put("python-backed", data)
        assert len(backend.objects) == 1, "the proxy stored the blob in the Python backend"
        (blob,) = backend.objects.values()
        assert blob == data
        assert client.get("python-backed") == data
        client.delete("python-backed")
        assert backend.objects == {}


class Broken(nimbus.CacheBackend):
    def put(self, key, data):
        raise OSError("disk on fire")

    def get(self, key):
        return None

    def delete(self, key):
        pass

    def list(self, prefix):
        return []


def test_a_failing_python_backend_is_unavailable_with_its_message(tmp_path):
    with nimbus.CacheProxy(settings(tmp_path), backend=Broken()).start() as proxy:
        with pytest.raises(nimbus.Unavailable, match="disk on fire"):
            nimbus.CacheClient(proxy.base_url, token()).put("k", b"v")


def test_a_backend_needs_the_methods():
    with pytest.raises(nimbus.InvalidInput, match="CacheBackend"):
        nimbus.CacheProxy({}, backend=object())


def test_the_async_client(tmp_path):
    with nimbus.CacheProxy(settings(tmp_path)).start() as proxy:
        client = nimbus.AsyncCacheClient(proxy.base_url, token())

        async def main():
            await client.put("async-key", b"awaited")
            return await client.get("async-key")

        assert asyncio.run(main()) == b"awaited"

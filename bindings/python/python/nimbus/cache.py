"""Cache backends written in Python, for the Rust cache proxy (docs/python.md)."""

import threading
import time
from typing import Any, Dict, List, Optional, Sequence


class CacheBackend:
    """Where the cache proxy keeps the bytes of cache entries.

    Subclass it and implement ``put``, ``get``, ``delete`` and ``list``; hand an
    instance to ``nimbus.CacheProxy(config, backend=...)``. The proxy keeps its index
    (keys, scopes, sizes, last use) itself and asks the backend for bytes only, from
    its own threads, one call at a time. An exception fails the request that needed
    it (the client sees 503) with the exception's message. Entries pass through
    memory whole: a Python backend is for tooling and tests; the ``fs`` and ``s3``
    backends stream.

    Uploads in parts (the Actions cache's chunked uploads) are staged in memory by
    this base class and handed to ``put`` whole when complete, so a subclass needs
    the four methods only.
    """

    def put(self, key: str, data: bytes) -> None:
        """Stores ``data`` under ``key``, replacing what was there."""
        raise NotImplementedError("a CacheBackend implements put(key, data)")

    def get(self, key: str) -> Optional[bytes]:
        """The bytes stored under ``key``, or ``None``."""
        raise NotImplementedError("a CacheBackend implements get(key)")

    def delete(self, key: str) -> None:
        """Removes ``key``; a missing key is not an error."""
        raise NotImplementedError("a CacheBackend implements delete(key)")

    def list(self, prefix: str) -> List[Dict[str, Any]]:
        """Every object whose key starts with ``prefix``: dicts ``key``, ``size`` and
        ``last_modified_millis`` (epoch ms; the proxy removes blobs no entry points
        at only an hour after they were written)."""
        raise NotImplementedError("a CacheBackend implements list(prefix)")

    def head(self, key: str) -> Optional[Dict[str, Any]]:
        """``key``'s description as ``list`` gives it, or ``None``."""
        for found in self.list(key):
            if found["key"] == key:
                return found
        return None

    # Staged uploads, kept by this base class.

    def _staging(self) -> Dict[str, Dict[str, bytes]]:
        staging = self.__dict__.get("_nimbus_staging")
        if staging is None:
            staging = self.__dict__.setdefault("_nimbus_staging", {})
        return staging

    def put_part(self, upload: str, part: str, data: bytes) -> None:
        """Stages one part of an upload (the same part again replaces it)."""
        self._staging().setdefault(upload, {})[part] = bytes(data)

    def complete(self, upload: str, parts: Sequence[str], key: str) -> bytes:
        """Joins the staged ``parts`` in order, stores them under ``key`` with
        ``put`` and returns the bytes stored."""
        staged = self._staging().pop(upload, {})
        missing = [part for part in parts if part not in staged]
        if missing:
            raise KeyError(f"upload {upload}: parts {missing} were never staged")
        data = b"".join(staged[part] for part in parts)
        self.put(key, data)
        return data

    def abort(self, upload: str) -> None:
        """Drops an upload's staged parts."""
        self._staging().pop(upload, None)

    def list_uploads(self) -> List[str]:
        """Uploads with staged parts."""
        return list(self._staging())


class MemoryCacheBackend(CacheBackend):
    """Entries in a dict: a reference implementation, and a backend for tests."""

    def __init__(self) -> None:
        self.objects: Dict[str, bytes] = {}
        self.written: Dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.objects[key] = bytes(data)
            self.written[key] = int(time.time() * 1000)

    def get(self, key: str) -> Optional[bytes]:
        with self._lock:
            return self.objects.get(key)

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)
            self.written.pop(key, None)

    def list(self, prefix: str) -> List[Dict[str, Any]]:
        with self._lock:
            return [
                {"key": key, "size": len(data), "last_modified_millis": self.written[key]}
                for key, data in sorted(self.objects.items())
                if key.startswith(prefix)
            ]

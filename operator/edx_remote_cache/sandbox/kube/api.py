"""The public, thread-hosted API: :class:`KubeApi`, the emulator on 127.0.0.1 with sync helpers for tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import http.client
import json
import logging
import pathlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import yaml

from .emulator import KubeEmulator, LoopbackServer
from .errors import KubeApiError
from .kinds import KOPF_PEERING_CRDS, ServedKind, builtin_kinds
from .requests import RequestRecord
from .store import DEFAULT_NAMESPACES, WATCH_HISTORY

if TYPE_CHECKING:
    import kopf

logger = logging.getLogger(__name__)


HELPER_USER_AGENT = "edx-remote-cache-sandbox/kube-helpers"


def _default_crd_path() -> pathlib.Path:
    from edx_remote_cache.domain.crd import crd_path  # $EDX_REMOTE_CACHE_CRD, then the checkout's crds/

    return crd_path()


class KubeApi:
    """Emulated kube-apiserver on 127.0.0.1, running in its own thread + event loop so sync code can use it.

    Serves the project's CRD (read from ``crd_path``, default ``$EDX_REMOTE_CACHE_CRD`` or the checkout's
    ``crds/edxremotecache.yaml``), kopf's peering CRDs and a few built-in kinds; see the module docstring for
    what it does not do. The sync helpers go through the same HTTP API as kopf does.
    """

    def __init__(
        self,
        *,
        crd_path: pathlib.Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        namespaces: Sequence[str] = DEFAULT_NAMESPACES,
        watch_history: int = WATCH_HISTORY,
    ) -> None:
        self.crd_path = pathlib.Path(crd_path) if crd_path is not None else _default_crd_path()
        with open(self.crd_path, encoding="utf-8") as fh:  # libyaml when present: 10x faster start-up
            self.crd: dict[str, Any] = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.kind = ServedKind.from_crd(self.crd)
        crds = [self.crd, *KOPF_PEERING_CRDS]
        kinds = [*builtin_kinds(), *(ServedKind.from_crd(crd) for crd in crds)]
        self.emulator = KubeEmulator(kinds, crds=crds, namespaces=namespaces, watch_history=watch_history)
        self._host, self._requested_port = host, port
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._listen: asyncio.Event | None = None  # cleared: an outage (the port closed, the state kept)
        self._listening = threading.Event()
        self._side_port: int | None = None  # the helpers' port during an outage
        self._failure: BaseException | None = None
        self._kinds_by_name = {kind.kind: kind for kind in kinds}

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("KubeApi can be started only once")
        self._thread = threading.Thread(
            target=self._thread_main, name="edx-remote-cache-kube-api", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the Kubernetes API emulator did not start in {timeout} s")
        if self._failure is not None:
            self._thread.join(timeout)
            raise RuntimeError("the Kubernetes API emulator failed to start") from self._failure

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, end all watches, free the port and join the thread (idempotent)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or not thread.is_alive():
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing already
                loop.call_soon_threadsafe(stopping.set)
                if self._listen is not None:
                    loop.call_soon_threadsafe(self._listen.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the Kubernetes API emulator did not stop in {timeout} s")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """The emulator's thread is up (it may be in an outage: see ``listening``)."""
        return self._thread is not None and self._thread.is_alive() and self._port is not None

    @property
    def listening(self) -> bool:
        return self.running and self._listening.is_set()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Kubernetes API emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            else:
                logger.exception("the Kubernetes API emulator crashed")
        finally:
            self._port = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._listen = asyncio.Event()
        self._listen.set()
        async with self.emulator:
            while not self._stopping.is_set():
                port = self._port or self._requested_port or None  # an outage ends on the same port
                async with LoopbackServer(self.emulator, host=self._host, port=port) as srv:
                    self._port = srv.port
                    self._ready.set()
                    self._listening.set()
                    await _first(self._stopping.wait(), _cleared(self._listen))
                    self.emulator.close_watches()
                    await asyncio.sleep(0)  # let the watch handlers see their end-of-stream first
                self._listening.clear()
                # the helpers below (the tests' own view) keep a port of their own through the outage
                async with LoopbackServer(self.emulator, host=self._host, port=None) as side:
                    self._side_port = side.port
                    await _first(self._stopping.wait(), self._listen.wait())
                self._side_port = None
                self.emulator.reopen_watches()

    # ---- outages -----------------------------------------------------------------------------------------

    def stop_listening(self, timeout: float = 10.0) -> None:
        """An apiserver outage: end every watch and close the port; the state stays (a restarted apiserver
        with its etcd), and the helpers below keep working on it (a client partitioned from the server)."""
        loop, listen = self._loop, self._listen
        assert loop is not None and listen is not None, "the Kubernetes API emulator is not running"
        loop.call_soon_threadsafe(listen.clear)
        if not _wait_until(lambda: not self._listening.is_set() and self._side_port is not None, timeout):
            raise TimeoutError(f"the Kubernetes API emulator did not stop listening in {timeout} s")

    def start_listening(self, *, compact: bool = False, timeout: float = 10.0) -> None:
        """End the outage: serve again on the same port. ``compact=True`` first forgets the watch history, so
        a client resuming from a resourceVersion older than the current one gets 410 Expired and must list
        again (etcd compacted while the client was away)."""
        if compact:
            self.call_in_loop(self.emulator.compact_watch_history)
        loop, listen = self._loop, self._listen
        assert loop is not None and listen is not None, "the Kubernetes API emulator is not running"
        loop.call_soon_threadsafe(listen.set)
        if not self._listening.wait(timeout):
            raise TimeoutError(f"the Kubernetes API emulator did not listen again in {timeout} s")

    def call_in_loop(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the emulator's event loop (where all its state lives) and return its result."""
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("the Kubernetes API emulator is not running")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def drop_watches(self) -> int:
        """End all open watch streams, like an apiserver's watch timeout; returns how many were open."""
        result: int = self.call_in_loop(self.emulator.drop_watches)
        return result

    # ---- client configuration ----------------------------------------------------------------------------

    def write_kubeconfig(self, path: pathlib.Path, *, namespace: str = "default") -> pathlib.Path:
        """A kubeconfig for kubectl, the kubernetes client and kopf (plain HTTP, no credentials)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "edx-remote-cache-sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "edx-remote-cache-sandbox", "user": {}}],
            "contexts": [
                {
                    "name": "edx-remote-cache-sandbox",
                    "context": {
                        "cluster": "edx-remote-cache-sandbox",
                        "user": "edx-remote-cache-sandbox",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "edx-remote-cache-sandbox",
            "preferences": {},
        }
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def connection_info(self, *, namespace: str = "default") -> kopf.ConnectionInfo:
        """For an in-process kopf operator: return this from an ``@kopf.on.login`` handler."""
        import kopf

        return kopf.ConnectionInfo(server=self.url, default_namespace=namespace, priority=1000)

    # ---- raw HTTP ----------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One HTTP request to the emulator (no proxies, loopback only); returns (status code, parsed JSON)."""
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        payload = None if body is None else json.dumps(body).encode()
        headers = {"User-Agent": HELPER_USER_AGENT, "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        port = self._side_port if self._side_port is not None else self.port  # an outage: the helpers' port
        conn = http.client.HTTPConnection(self._host, port, timeout=timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data.decode("utf-8", "replace")
        return response.status, parsed

    def _call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        code, parsed = self.request(method, path, body, **kwargs)
        if not 200 <= code < 300:
            raise KubeApiError(code, parsed)
        return parsed

    def served_kind(self, kind: str = "EdxRemoteCache") -> ServedKind:
        try:
            return self._kinds_by_name[kind]
        except KeyError:
            raise ValueError(f"the emulator does not serve kind {kind!r}") from None

    # ---- sync helpers ------------------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Create any served object (by its ``kind``); namespaced ones default to ``metadata.namespace``/default."""
        kind = self.served_kind(obj.get("kind") or self.kind.kind)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        result: dict[str, Any] = self._call("POST", kind.path(ns if kind.namespaced else None), dict(obj))
        return result

    def get(self, namespace: str | None, name: str, *, kind: str = "EdxRemoteCache") -> dict[str, Any] | None:
        served = self.served_kind(kind)
        code, parsed = self.request("GET", served.path(namespace, name))
        if code == 404:
            return None
        if code != 200:
            raise KubeApiError(code, parsed)
        return dict(parsed)

    def list_objects(
        self,
        namespace: str | None = None,
        *,
        kind: str = "EdxRemoteCache",
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        items: list[dict[str, Any]] = self._call("GET", self.served_kind(kind).path(namespace), query=query)[
            "items"
        ]
        return items

    def patch(
        self,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        kind: str = "EdxRemoteCache",
        subresource: str | None = None,
        patch_type: str = "merge",
    ) -> dict[str, Any]:
        """Patch like a client would: ``patch_type`` is ``merge`` (RFC 7386) or ``json`` (RFC 6902)."""
        content_type = {"merge": "application/merge-patch+json", "json": "application/json-patch+json"}[
            patch_type
        ]
        path = self.served_kind(kind).path(namespace, name, subresource)
        result: dict[str, Any] = self._call("PATCH", path, patch, content_type=content_type)
        return result

    def patch_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch an EdxRemoteCache's spec (``None`` values delete keys), as ``kubectl patch --type=merge``."""
        return self.patch(namespace, name, {"spec": dict(spec)})

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch an EdxRemoteCache's status through the ``/status`` subresource."""
        return self.patch(namespace, name, {"status": dict(status)}, subresource="status")

    def replace(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        """PUT the whole object (needs its current ``metadata.resourceVersion``; 409 if stale)."""
        kind = self.served_kind(obj.get("kind") or self.kind.kind)
        meta = obj.get("metadata") or {}
        path = kind.path(meta.get("namespace"), meta["name"], subresource)
        result: dict[str, Any] = self._call("PUT", path, dict(obj))
        return result

    def delete(
        self, namespace: str | None, name: str, *, kind: str = "EdxRemoteCache", missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """Delete (or, with finalizers, mark for deletion); returns the object as the API answered it."""
        code, parsed = self.request("DELETE", self.served_kind(kind).path(namespace, name))
        if code == 404 and missing_ok:
            return None
        if code not in (200, 202):
            raise KubeApiError(code, parsed)
        return dict(parsed)

    def create_namespace(self, name: str) -> dict[str, Any]:
        return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def list_events(
        self, namespace: str | None = None, *, involved_name: str | None = None
    ) -> list[dict[str, Any]]:
        """Core v1 Events (what kopf posts), oldest first; optionally only those about one object name."""
        selector = f"involvedObject.name={involved_name}" if involved_name else None
        events = self.list_objects(namespace, kind="Event", field_selector=selector)
        return sorted(
            events,
            key=lambda e: (e["metadata"].get("creationTimestamp", ""), int(e["metadata"]["resourceVersion"])),
        )

    def wait_for(
        self,
        namespace: str | None,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        *,
        kind: str = "EdxRemoteCache",
        timeout: float = 10.0,
        interval: float = 0.02,
    ) -> dict[str, Any] | None:
        """Poll until ``predicate(object or None)`` holds; return that state, or raise TimeoutError with the last."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get(namespace, name, kind=kind)
            if predicate(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {namespace}/{name} did not reach the wanted state; last: {obj!r}")
            time.sleep(interval)

    # ---- request log -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log (every request, including the helpers' own and kopf's watches)."""
        return list(self.emulator.records)

    def status_writes(
        self, *, kind: str = "EdxRemoteCache", since: float | None = None
    ) -> list[RequestRecord]:
        """PATCH/PUT requests to ``.../status`` of ``kind`` (arrival time ≥ ``since``, a time.time() value)."""
        return [
            r
            for r in self.requests
            if r.status_write and r.kind == kind and (since is None or r.time >= since)
        ]

    def clear_requests(self) -> None:
        self.emulator.records.clear()

    @property
    def errors(self) -> list[str]:
        """Tracebacks of emulator bugs (answered as 500); tests should assert this stays empty."""
        return list(self.emulator.internal_errors)

    def iter_history(
        self, namespace: str | None, name: str, *, kind: str = "EdxRemoteCache"
    ) -> Iterator[dict]:
        """Every stored version of one object, oldest first (kmock keeps them); read-only snapshots."""
        served = self.served_kind(kind)
        key = (served.ref, namespace if served.namespaced else None, name)
        if key in self.emulator.objects:
            for version in list(self.emulator.objects[key].history):
                if version is not None:
                    yield copy.deepcopy(version.raw)


async def _first(*waits: Any) -> None:
    """Return when the first of ``waits`` (coroutines) finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _cleared(event: asyncio.Event) -> None:
    while event.is_set():
        await asyncio.sleep(0.05)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

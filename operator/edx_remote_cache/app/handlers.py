"""kopf handlers, one line of work each: the reconciler (reconciler/) does the work, the wiring builds it.

create/update/resume -> reconcile; delete -> teardown (finalizer); one daemon per resource runs the probe loop,
the healing ladder and the drift pass every `driftIntervalSeconds` (app/daemon.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
from typing import Any

import kopf

from edx_remote_cache import GROUP, PLURAL, VERSION
from edx_remote_cache.adapters.metrics import serve
from edx_remote_cache.adapters.probe import close_pooled_connections
from edx_remote_cache.app.claims import IndexedClaims, index_claims
from edx_remote_cache.app.daemon import run_daemon
from edx_remote_cache.app.settings import Settings
from edx_remote_cache.app.wiring import build_reconciler
from edx_remote_cache.domain.claims import Claim
from edx_remote_cache.reconciler.reconciler import RequeueError

registry = kopf.OperatorRegistry()
RESOURCE = (GROUP, VERSION, PLURAL)
ANNOTATION_PREFIX = "edx-remote-cache.openedx.org"
_settings = Settings()


def configure(settings: Settings) -> None:
    """Called once by `edx-remote-cache run` before kopf starts."""
    global _settings
    _settings = settings


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else $KUBECONFIG / ~/.kube/config (the sandbox writes one)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index(*RESOURCE, registry=registry)
def edx_host_claims(body: kopf.Body, **_: Any) -> dict[str, Claim]:
    """Which object names which Open edX host (one host, one owner: domain/claims.py)."""
    return index_claims(body)


@kopf.on.startup(registry=registry)
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, edx_host_claims: kopf.Index[str, Claim], **_: Any
) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 32
    # every blocking adapter call (boto3, SSM polling, status PATCHes) goes through asyncio.to_thread: the
    # default pool (cpu + 4 threads) queued one resource's first pass for ~50 s at 500 resources
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="edx-remote-cache")
    )
    if _settings.peering_lifetime:
        settings.peering.lifetime = max(2, int(_settings.peering_lifetime))
    memo.reconciler = build_reconciler(_settings, claims=IndexedClaims(edx_host_claims))
    if _settings.metrics_port:
        serve(
            _settings.metrics_port,
            registry=memo.reconciler.adapters.metrics.registry,
            addr=_settings.metrics_addr,
        )


@kopf.on.cleanup(registry=registry)
async def cleanup(**_: Any) -> None:
    """Close the probes' pooled memcached connections on the way out (a clean FIN rather than a reset)."""
    close_pooled_connections()


@kopf.on.resume(*RESOURCE, registry=registry)
@kopf.on.create(*RESOURCE, registry=registry)
@kopf.on.update(*RESOURCE, registry=registry)
async def reconcile(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
    try:
        await memo.reconciler.reconcile(_snapshot(body), trigger="spec" if reason != "resume" else "resume")
    except RequeueError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.on.delete(*RESOURCE, registry=registry)
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    try:
        await memo.reconciler.teardown(_snapshot(body), retry=retry)
    except RequeueError as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc


@kopf.daemon(*RESOURCE, registry=registry, cancellation_timeout=10.0)
async def watch(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Probe every probe.intervalSeconds, heal when needed, re-observe for drift every driftIntervalSeconds."""
    await run_daemon(body, memo.reconciler, stopped)

"""Kubernetes adapter for the one thing the operator writes on its own objects: `status`, via `/status`.

kopf owns the main resource (finalizers, progress annotations); status is written here so the probe daemon,
the drift timer and the handlers share one writer that skips writes when nothing changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from edx_remote_cache import GROUP, PLURAL, VERSION
from edx_remote_cache.adapters.ports import StatusUnavailable

# One write may not hold an object's lock for long when the API server hangs (connect, read) in seconds.
REQUEST_TIMEOUT = (5, 15)


class KubernetesStatusWriter:
    """Merge-patches `status` through the subresource with the official client (kubeconfig or in-cluster)."""

    def __init__(self, api: Any | None = None) -> None:
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CustomObjectsApi()
        self._api = api
        self.writes = 0

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            await asyncio.to_thread(
                self._api.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": dict(status)},
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 404:  # the object is gone: nothing to report on
                return
            if exc.status == 429 or exc.status >= 500:
                raise StatusUnavailable(f"{exc.status} {exc.reason}") from exc
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, reset, timed out: the API is away
            raise StatusUnavailable(str(exc)) from exc
        self.writes += 1

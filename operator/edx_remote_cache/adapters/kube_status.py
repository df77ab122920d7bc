"""Kubernetes adapter for the one thing the operator writes on its own objects: `status`, via `/status`.

kopf owns the main resource (finalizers, progress annotations); status is written here so the probe daemon,
the drift timer and the handlers share one writer that skips writes when nothing changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from edx_remote_cache import GROUP, PLURAL, VERSION


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
            )
        except ApiException as exc:
            if exc.status == 404:  # the object is gone: nothing to report on
                return
            raise
        self.writes += 1

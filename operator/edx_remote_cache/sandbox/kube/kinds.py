"""The resources the emulator serves: their names, scope, subresources and schema (from CRDs or built in)."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any

import kmock

from .schema import StructuralSchema

# kopf's own peering CRDs, as published in kopf's docs (no status subresource: kopf writes the main resource).
_PEERING_SCHEMA = {
    "type": "object",
    "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
}
KOPF_PEERING_CRDS: tuple[dict[str, Any], ...] = tuple(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "scope": scope,
            "group": "kopf.dev",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _PEERING_SCHEMA},
                }
            ],
        },
    }
    for kind, plural, scope in (
        ("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        ("KopfPeering", "kopfpeerings", "Namespaced"),
    )
)


@dataclasses.dataclass(frozen=True, eq=False)
class ServedKind:
    """One resource the emulator serves: its names, scope, subresources, schema and strategy flags."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    custom: bool = False  # a custom resource: CR strategies (generation, unconditional PUT refused, no SMP)
    has_generation: bool = False
    schema: StructuralSchema | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()  # a CRD version's additionalPrinterColumns

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def group_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def ref(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{urllib.parse.quote(namespace)}")
        parts.append(self.plural)
        if name is not None:
            parts.append(urllib.parse.quote(name))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> ServedKind:
        spec = crd["spec"]
        names = spec["names"]
        version = next(v for v in spec["versions"] if v.get("storage"))
        openapi = (version.get("schema") or {}).get("openAPIV3Schema")
        return cls(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec["scope"] == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            status_subresource="status" in (version.get("subresources") or {}),
            custom=True,
            has_generation=True,
            schema=StructuralSchema(openapi) if openapi else None,
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
        )


def builtin_kinds() -> list[ServedKind]:
    return [
        ServedKind(
            "", "v1", "namespaces", "Namespace", "namespace", False, ("ns",), (), status_subresource=True
        ),
        ServedKind("", "v1", "events", "Event", "event", True, ("ev",)),
        ServedKind("", "v1", "configmaps", "ConfigMap", "configmap", True, ("cm",)),
        ServedKind("", "v1", "secrets", "Secret", "secret", True),
        ServedKind("coordination.k8s.io", "v1", "leases", "Lease", "lease", True),
        ServedKind(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            "customresourcedefinition",
            False,
            ("crd", "crds"),
            status_subresource=True,
            has_generation=True,
        ),
    ]


NAMESPACES_KEY = ("", "v1", "namespaces")

"""The object store and the verbs (create, update, patch, delete) with an apiserver's rules, on kmock's store."""

from __future__ import annotations

import collections
import copy
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kmock

from . import apply as fields
from .cel import transition_errors
from .errors import ApiError, FieldError, GoLiteral, utc_now
from .kinds import NAMESPACES_KEY, ServedKind
from .requests import GENERATE_NAME_ALPHABET, SERVER_MANAGED_META, RequestRecord, meta_errors, without_meta
from .watch import Watcher, WatchEvent


def _openapi(kind: ServedKind) -> dict[str, Any] | None:
    return kind.schema.openapi if kind.schema is not None else None


WATCH_HISTORY = 10_000  # watch events kept for ?resourceVersion=N; older ones answer 410 Expired
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class KubeStore(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with an apiserver's storage rules: resourceVersion, generation, finalizers, schema.

    All state changes happen in synchronous methods on the server's event loop, so each request is atomic.
    The objects live in kmock's ``objects`` store (every version is kept in its history).
    """

    def __init__(
        self,
        kinds: Sequence[ServedKind],
        *,
        crds: Sequence[Mapping[str, Any]] = (),
        namespaces: Sequence[str] = DEFAULT_NAMESPACES,
        watch_history: int = WATCH_HISTORY,
    ) -> None:
        super().__init__()
        self.kinds: dict[tuple[str, str, str], ServedKind] = {}
        self.records: collections.deque[RequestRecord] = collections.deque(maxlen=200_000)
        self.internal_errors: list[str] = []
        self._rv = 0
        self._log: collections.deque[WatchEvent] = collections.deque(maxlen=watch_history)
        self._compacted_rv = 0
        self._watchers: set[Watcher] = set()
        self._closing = False
        self._openapi_v3: dict[str, dict[str, Any]] | None = None
        for kind in kinds:
            self.kinds[kind.group, kind.version, kind.plural] = kind
            info = self.resources[kind.ref]
            info.kind, info.singular, info.namespaced = kind.kind, kind.singular, kind.namespaced
            info.shortnames, info.categories = set(kind.short_names), set(kind.categories)
            info.verbs = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
            info.subresources = {"status"} if kind.status_subresource else set()
        for name in namespaces:
            self.create_object(self._kind("Namespace"), None, {"metadata": {"name": name}})
        for crd in crds:
            stored = self.create_object(
                self._kind("CustomResourceDefinition"), None, copy.deepcopy(dict(crd))
            )
            status = {
                "acceptedNames": stored["spec"]["names"],
                "storedVersions": [v["name"] for v in stored["spec"]["versions"] if v.get("storage")],
                "conditions": [
                    {"type": t, "status": "True", "reason": r, "lastTransitionTime": utc_now()}
                    for t, r in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
                ],
            }
            name = stored["metadata"]["name"]
            self.update_object(
                self._kind("CustomResourceDefinition"), None, name, {**stored, "status": status}, "status"
            )

    def _kind(self, kind_name: str) -> ServedKind:
        return next(k for k in self.kinds.values() if k.kind == kind_name)

    @property
    def resource_version(self) -> int:
        return self._rv

    # ---- storage -----------------------------------------------------------------------------------------

    def current(self, kind: ServedKind, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kind.ref, namespace if kind.namespaced else None, name)
        if key not in self.objects:
            return None
        stored = self.objects[key]
        return None if stored.deleted else stored.raw

    def live(self, kind: ServedKind, namespace: str | None = None) -> list[dict[str, Any]]:
        found = [
            (ns or "", name, stored.raw)
            for (ref, ns, name), stored in self.objects.items()
            if ref == kind.ref and not stored.deleted and (namespace is None or ns == namespace)
        ]
        return [obj for _, _, obj in sorted(found, key=lambda item: (item[0], item[1]))]

    def _commit(self, kind: ServedKind, event: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        key = (kind.ref, meta.get("namespace") if kind.namespaced else None, meta["name"])
        if key not in self.objects:
            self.objects[key] = obj
        elif event == "DELETED":
            self.objects[key].history.append(obj)  # the final state is kept in the history, then soft-deleted
            self.objects[key].delete()
        else:
            self.objects[key].history.append(obj)
        if len(self._log) == self._log.maxlen:
            self._compacted_rv = self._log[0].rv
        record = WatchEvent(self._rv, kind, event, obj, prev)
        self._log.append(record)
        for watcher in list(self._watchers):
            if watcher.kind is kind and (line := watcher.translate(record)) is not None:
                watcher.queue.put_nowait(line)
        if event == "DELETED" and kind.namespaced:
            self._finalize_namespace(meta.get("namespace"))
        return obj

    # ---- verbs -------------------------------------------------------------------------------------------

    def create_object(
        self,
        kind: ServedKind,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        strict: bool = False,
        manager: str | None = None,
    ) -> dict[str, Any]:
        obj, _ = self._prepare_create(kind, namespace, body, strict=strict, manager=manager)
        return obj if dry_run else self._commit(kind, "ADDED", obj, None)

    def _prepare_create(
        self,
        kind: ServedKind,
        namespace: str | None,
        body: Any,
        *,
        strict: bool,
        manager: str | None = None,
        applied: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """The object a create would store; ``manager`` owns its fields (``applied``: the body carries them)."""
        if not isinstance(body, dict):
            raise ApiError.bad_request("the request body must be a JSON object")
        obj = self._typed(kind, copy.deepcopy(body))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError.bad_request("metadata must be an object")
        if kind.namespaced:
            if namespace is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
            self._check_namespace(kind, namespace)
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                detail = "name or generateName is required"
                error = FieldError("metadata.name", "Required value", detail=detail, show_value=False)
                raise ApiError.invalid(kind, "", [error])
            meta["name"] = self._generate_name(kind, namespace, meta["generateName"])
        name = meta["name"]
        if self.current(kind, namespace, name) is not None:
            details = {"name": name, "group": kind.group, "kind": kind.plural}
            raise ApiError(409, "AlreadyExists", f'{kind.group_resource} "{name}" already exists', details)
        managed = meta.get("managedFields") if applied else None
        for field in SERVER_MANAGED_META:
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = utc_now()
        if kind.has_generation:
            meta["generation"] = 1
        if kind.status_subresource and kind.custom:
            obj.pop("status", None)  # the CR strategy resets status on create
        if kind.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        warnings = self._decode(kind, obj, strict=strict)
        if managed is not None:
            meta["managedFields"] = managed
        elif manager is not None:
            meta["managedFields"] = fields.track_update(
                None,
                obj,
                manager=manager,
                subresource=None,
                schema=_openapi(kind),
                api_version=kind.api_version,
            )
        self._validate(kind, obj, name)
        return obj, warnings

    def update_object(
        self,
        kind: ServedKind,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], Any] | dict[str, Any],
        subresource: str | None = None,
        *,
        replace: bool = False,
        dry_run: bool = False,
        strict: bool = False,
        manager: str | None = None,
        applied: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT (``change`` is the new object) or PATCH (``change`` maps the current object to the new one)."""
        old = self.current(kind, namespace, name)
        if old is None:
            raise ApiError.not_found(kind, name)
        candidate = change(copy.deepcopy(old)) if callable(change) else copy.deepcopy(change)
        if not isinstance(candidate, dict):
            raise ApiError.bad_request("the resulting object must be a JSON object")
        candidate = self._typed(kind, candidate)
        meta = candidate.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError.bad_request("metadata must be an object")
        old_meta = old["metadata"]
        if meta.get("name", name) != name:
            raise ApiError.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if kind.namespaced and meta.get("namespace", namespace) not in (namespace, ""):
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv and wanted_rv != old_meta["resourceVersion"]:
            raise ApiError.conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if replace and not wanted_rv and kind.custom:
            unset = GoLiteral("0x0")
            error = FieldError(
                "metadata.resourceVersion", "Invalid value", unset, "must be specified for an update"
            )
            raise ApiError.invalid(kind, name, [error])
        # managedFields: computed by an apply, or replaced by the client (kubectl does so when it moves
        # client-side apply's ownership to server-side apply), else tracked below.
        given = meta.get("managedFields")
        keep_given = applied or (isinstance(given, list) and given != old_meta.get("managedFields"))
        for field in SERVER_MANAGED_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["name"] = name
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                detail = "no new finalizers can be added if the object is being deleted"
                error = FieldError("metadata.finalizers", "Forbidden", detail=detail, show_value=False)
                raise ApiError.invalid(kind, name, [error])
        warnings = self._decode(kind, candidate, strict=strict)
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
            candidate = new
        elif kind.status_subresource:
            if "status" in old:
                candidate["status"] = copy.deepcopy(old["status"])
            else:
                candidate.pop("status", None)
            if kind.plural == "namespaces":
                candidate["spec"] = copy.deepcopy(old.get("spec", {}))
        if kind.has_generation and subresource != "status" and without_meta(candidate) != without_meta(old):
            candidate["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if keep_given:
            candidate["metadata"]["managedFields"] = given
        elif manager is not None:
            candidate["metadata"]["managedFields"] = fields.track_update(
                old,
                candidate,
                manager=manager,
                subresource=subresource,
                schema=_openapi(kind),
                api_version=kind.api_version,
            )
        if not candidate["metadata"].get("managedFields"):
            candidate["metadata"].pop("managedFields", None)
        self._validate(kind, candidate, name, old)
        if candidate == old:
            return old, warnings  # a no-op: nothing written, no new resourceVersion, no watch event
        if dry_run:
            return candidate, warnings
        if candidate["metadata"].get("deletionTimestamp") and not candidate["metadata"].get("finalizers"):
            return self._commit(kind, "DELETED", candidate, old), warnings
        return self._commit(kind, "MODIFIED", candidate, old), warnings

    def delete_object(
        self,
        kind: ServedKind,
        namespace: str | None,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Delete now, or mark for deletion when finalizers remain. Returns (object, deleted-immediately)."""
        old = self.current(kind, namespace, name)
        if old is None:
            raise ApiError.not_found(kind, name)
        preconditions = (options or {}).get("preconditions") or {}
        meta = old["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = preconditions.get(field)
            if wanted and wanted != meta.get(field):
                raise ApiError.conflict(
                    kind,
                    name,
                    f"Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {meta.get(field)}",
                )
        if dry_run:
            return old, not meta.get("finalizers")
        if meta.get("deletionTimestamp"):
            return old, False
        new = copy.deepcopy(old)
        if kind.plural == "namespaces":
            new["metadata"]["deletionTimestamp"] = utc_now()
            new["status"] = {"phase": "Terminating"}
            self._commit(kind, "MODIFIED", new, old)
            for other in self.kinds.values():
                if other.namespaced:
                    for obj in self.live(other, name):
                        self.delete_object(other, name, obj["metadata"]["name"])
            self._finalize_namespace(name)
            return self.current(kind, None, name) or new, False
        if meta.get("finalizers"):
            new["metadata"]["deletionTimestamp"] = utc_now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(kind, "MODIFIED", new, old), False
        return self._commit(kind, "DELETED", new, old), True

    def _finalize_namespace(self, namespace: str | None) -> None:
        ns_kind = self.kinds[NAMESPACES_KEY]
        ns = self.current(ns_kind, None, namespace) if namespace else None
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        if any(self.live(kind, namespace) for kind in self.kinds.values() if kind.namespaced):
            return
        self._commit(ns_kind, "DELETED", copy.deepcopy(ns), ns)

    # ---- helpers of the verbs ----------------------------------------------------------------------------

    @staticmethod
    def _typed(kind: ServedKind, obj: dict[str, Any]) -> dict[str, Any]:
        """The object with apiVersion/kind filled in from the URL (first, as the apiserver prints them)."""
        api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != kind.api_version:
            raise ApiError.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version"
                f" ({kind.api_version})"
            )
        if kind_name and kind_name != kind.kind:
            raise ApiError.bad_request(
                f"the kind in the data ({kind_name}) does not match the expected kind ({kind.kind})"
            )
        rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        return {"apiVersion": kind.api_version, "kind": kind.kind, **rest}

    def _check_namespace(self, kind: ServedKind, namespace: str) -> None:
        ns = self.current(self.kinds[NAMESPACES_KEY], None, namespace)
        if ns is None:
            details = {"name": namespace, "kind": "namespaces"}
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found', details)
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"{kind.group_resource} is forbidden: unable to create new content in namespace {namespace}"
                " because it is being terminated",
            )

    def _generate_name(self, kind: ServedKind, namespace: str | None, prefix: str) -> str:
        for _ in range(100):
            name = prefix + "".join(random.choices(GENERATE_NAME_ALPHABET, k=5))
            if self.current(kind, namespace, name) is None:
                return name
        raise ApiError(500, "InternalError", "could not generate a unique name")

    def _decode(self, kind: ServedKind, obj: dict[str, Any], *, strict: bool) -> list[str]:
        """Prune unknown fields and apply defaults (the decode step); Strict field validation rejects instead."""
        if kind.schema is None:
            return []
        dropped = kind.schema.prune(obj)
        if dropped and strict:
            raise self.unknown_fields(kind, dropped)
        kind.schema.apply_defaults(obj)
        return [f'unknown field "{path}"' for path in dropped]

    @staticmethod
    def unknown_fields(kind: ServedKind, dropped: Sequence[str]) -> ApiError:
        """The 400 of ``fieldValidation=Strict`` (what kubectl sends by default) for fields the schema lacks."""
        unknown = ", ".join(f'unknown field "{path}"' for path in dropped)
        return ApiError.bad_request(
            f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: strict decoding error: {unknown}'
        )

    def _validate(
        self, kind: ServedKind, obj: dict[str, Any], name: str, old: Mapping[str, Any] | None = None
    ) -> None:
        errors = meta_errors(kind, obj["metadata"])
        if kind.schema is not None:
            errors += kind.schema.errors(obj)
            if not errors:  # CEL rules (x-kubernetes-validations) run on a structurally valid object only
                errors += [
                    FieldError(field, "Invalid value", GoLiteral(f'"{type_}"'), message)
                    for field, type_, message in transition_errors(kind.schema.openapi, obj, old)
                ]
        if errors:
            raise ApiError.invalid(kind, name, errors)

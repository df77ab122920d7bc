"""The sandbox's Kubernetes API: kmock's KubernetesEmulator, made faithful enough to run a real kopf operator.

Stock kmock 0.8 is an in-memory JSON store: it stamps no resourceVersion/uid/generation/creationTimestamp (so
kopf's finalizer JSON-patch, guarded by ``test /metadata/resourceVersion``, fails with a 500 and ``on.create``
never runs), cannot parse ``GET /api/v1/namespaces``, does not isolate ``/status``, does no schema validation and
replays no watch history. The subclass below serves every resource path itself and keeps kmock for the HTTP
server, the discovery documents (/api, /apis) and the object store with per-object history. Stock kmock's
``kmock.Server`` also patches aiohttp's resolver for the whole process (and raises unless servers exit in LIFO
order), so the emulator is served by a subclass without that interceptor.

What the emulator does (a real apiserver's rules): resourceVersion from one global counter, bumped on every
write and on nothing else (a no-op patch writes nothing); uid/creationTimestamp on create; metadata.generation
on custom resources, bumped when anything but metadata/status changes; generateName; merge-patch and
JSON-patch (a failed ``test`` op answers 422); PUT with optimistic concurrency (409); the status subresource
(``/status`` writes change only status, main writes never change status; status is dropped on create);
finalizers and deletionTimestamp (no new finalizers once deleting); the CRD's structural schema on
create/update/patch/status (pruning of unknown fields with a ``Warning`` header, or 400 with
``?fieldValidation=Strict``; defaults; validation answered with 422 and a ``Status`` naming each field);
namespaces must exist and deleting one deletes its content; list with label/field selectors and limit/continue;
watch from ``?resourceVersion=N`` (only later events; 410 Expired once compacted), ``sendInitialEvents`` with the
initial-events-end bookmark, ``timeoutSeconds``, selector transitions as ADDED/DELETED; server-side Tables
for the CRD's printer columns (``kubectl get erc`` shows Phase/Endpoint/Hit%/Hosts/Age) and for Events; field
selectors limited to the labels each kind supports (``involvedObject.*`` for Events); OpenAPI v3/v2 documents
from the CRDs (kubectl's default validation sends ``fieldValidation=Strict``; ``kubectl explain``); server-side
apply with managedFields, 409 conflicts between managers and ``force``.

What it does NOT do (README material):

- no authentication, authorization or RBAC: every request is anonymous and allowed; plain HTTP, no TLS;
- no admission: no webhooks (kopf's admission handlers are never called), no CEL/x-kubernetes-validations, no
  validation ratcheting, no ResourceQuota/LimitRange; the NamespaceLifecycle check is the only admission rule;
- server-side apply keeps ownership per leaf field (an object emptied by an apply stays, empty); list types come
  from the CRD schema (built-in kinds' lists are atomic); strategic-merge-patch is accepted for built-in kinds
  only and applied as a plain JSON merge-patch; protobuf bodies are decoded only for what kubectl sends (a
  Namespace, DeleteOptions);
- no controllers: no garbage collection by ownerReferences, propagationPolicy is ignored, no event TTL,
  no Pods/Deployments/Services at all (served: namespaces, events, configmaps, secrets, leases,
  customresourcedefinitions, the project's CRD, kopf's KopfPeering/ClusterKopfPeering);
- CRDs are stored and listed, but creating or changing one at runtime does not change what is served;
  one version per CRD, no conversion, no scale subresource; server-side Tables only for CRDs' printer columns and Events;
- built-in kinds are not validated (only metadata.name and labels), and PUT never creates;
- no periodic watch BOOKMARKs, no watch cache semantics for ``resourceVersionMatch``; list continue tokens
  are offsets into the current state, not snapshots;
- no aggregated discovery; the OpenAPI documents publish the CRDs' schemas but not the built-in kinds' fields,
  and /openapi/v2 is served as JSON only (client-go asks for protobuf there; kubectl uses v3); no rate limiting
  (API Priority and Fairness) and no request timeouts;
- state lives in memory only and is lost on stop.
"""

from .api import HELPER_USER_AGENT, KubeApi
from .emulator import KubeEmulator
from .errors import FieldError, KubeApiError
from .kinds import KOPF_PEERING_CRDS, ServedKind
from .requests import RequestRecord
from .schema import StructuralSchema
from .store import DEFAULT_NAMESPACES, WATCH_HISTORY

__all__ = [
    "DEFAULT_NAMESPACES",
    "HELPER_USER_AGENT",
    "KOPF_PEERING_CRDS",
    "WATCH_HISTORY",
    "FieldError",
    "KubeApi",
    "KubeApiError",
    "KubeEmulator",
    "RequestRecord",
    "ServedKind",
    "StructuralSchema",
]

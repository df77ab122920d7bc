"""The HTTP side of the emulator: routing each request to the store's verbs, lists, watches and tables."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp.test_utils
import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import yaml

from . import apply as ssa
from . import openapi, protobuf
from .errors import ApiError
from .kinds import ServedKind
from .requests import RequestRecord, Route, json_response, merge_patch, parse_route
from .selectors import parse_field_selector, parse_label_selector, selected
from .store import KubeStore
from .tables import build_table, wants_table
from .watch import Watcher

logger = logging.getLogger(__name__)


class KubeEmulator(KubeStore):
    """The store served over HTTP with apiserver semantics for every resource path (discovery stays kmock's)."""

    # ---- discovery fixes over kmock's scaffold -------------------------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> Any:
        body = await super()._serve_version(request)
        if isinstance(body, dict):
            # kmock says "/v1" for the core group; kubectl needs "v1".
            body["groupVersion"] = body.get("groupVersion", "").lstrip("/")
            for entry in body.get("resources", []):
                if "/" in entry["name"]:  # subresources: no short names/categories (kubectl warns otherwise)
                    entry.update(shortNames=[], categories=[], verbs=["get", "patch", "update"])
                else:
                    entry["verbs"] = sorted(entry["verbs"])
        return body

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesNotFoundError):  # unknown paths: a plain 404, no kmock hints
            error = ApiError(404, "NotFound", "the server could not find the requested resource")
            return json_response(error.status(), 404)
        return await super()._render_error(exc)

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        return {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0+edx-remote-cache-sandbox",
            "gitTreeState": "clean",
            "platform": "linux/amd64",
        }

    def _serve_openapi(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        if self._openapi_v3 is None:  # the served kinds are fixed: build once, on first use
            self._openapi_v3 = openapi.v3_documents(self.kinds.values())
        accept = raw.headers.get("Accept", "")
        if raw.path == "/openapi/v3":
            return json_response(openapi.v3_index(self._openapi_v3))
        if raw.path.startswith("/openapi/v3/") and raw.path.removeprefix("/openapi/v3/") in self._openapi_v3:
            return json_response(self._openapi_v3[raw.path.removeprefix("/openapi/v3/")])
        if raw.path == "/openapi/v2" and ("json" in accept or "*/*" in accept or not accept):
            return json_response(openapi.v2_document(self.kinds.values()))
        if raw.path == "/openapi/v2":  # client-go's v2 client asks for protobuf only; kubectl then uses v3
            error = ApiError(
                406, "NotAcceptable", "only the following media types are accepted: application/json"
            )
            return json_response(error.status(), 406)
        error = ApiError(404, "NotFound", "the server could not find the requested resource")
        return json_response(error.status(), 404)

    # ---- HTTP --------------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        route = parse_route(raw_request.path)
        kind = self.kinds.get((route.group, route.version, route.plural)) if route and route.plural else None
        record = RequestRecord(
            time=time.time(),
            method=raw_request.method,
            path=raw_request.path,
            query=raw_request.query_string,
            verb=self._verb(raw_request, route),
            kind=kind.kind if kind else None,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
            status_write=bool(
                route and route.subresource == "status" and raw_request.method in ("PATCH", "PUT")
            ),
            user_agent=raw_request.headers.get("User-Agent", ""),
        )
        self.records.append(record)
        if raw_request.path.startswith("/openapi/"):
            document = self._serve_openapi(raw_request)
            record.code = document.status
            return document
        if route is None or route.plural is None:
            response = await super().__call__(raw_request)  # discovery & the rest: kmock's scaffold
            record.code = response.status
            return response
        try:
            self._remember(raw_request, route, body)
            if kind is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return await self._serve(raw_request, route, kind, body, record)
        except ApiError as exc:
            record.code = exc.code
            return json_response(exc.status(), exc.code)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:  # a bug in the emulator: answer 500 and keep it for the tests to assert on
            self.internal_errors.append("".join(traceback.format_exception(exc)))
            logger.exception("kube emulator failed on %s %s", raw_request.method, raw_request.path)
            record.code = 500
            error = ApiError(500, "InternalError", f"emulator error: {exc!r}")
            return json_response(error.status(), 500)

    @staticmethod
    def _verb(raw_request: aiohttp.web.BaseRequest, route: Route | None) -> str:
        method = raw_request.method
        if route is None or route.plural is None:
            return method.lower()
        if method == "GET":
            if raw_request.query.get("watch", "").lower() in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())

    def _remember(self, raw_request: aiohttp.web.BaseRequest, route: Route, body: bytes) -> None:
        """Keep kmock's request list complete, so kmock-style assertions on ``emulator.requests`` still work."""
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        actions = {
            "GET": kmock.action.FETCH if route.name else kmock.action.LIST,
            "POST": kmock.action.CREATE,
        }
        actions |= {"PATCH": kmock.action.UPDATE, "PUT": kmock.action.UPDATE, "DELETE": kmock.action.DELETE}
        if raw_request.query.get("watch", "").lower() in ("true", "1"):
            actions["GET"] = kmock.action.WATCH
        self._requests.append(
            kmock.Request(
                id=len(self._requests),
                method=raw_request.method,
                url=raw_request.url,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                text=body.decode("utf-8", "replace"),
                data=data,
                action=actions.get(raw_request.method),
                resource=kmock.resource(route.group, route.version, route.plural),
                namespace=route.namespace,
                name=route.name,
                subresource=route.subresource,
            )
        )

    async def _serve(
        self,
        raw: aiohttp.web.BaseRequest,
        route: Route,
        kind: ServedKind,
        body: bytes,
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        if route.namespace is not None and not kind.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if route.subresource is not None and not (route.subresource == "status" and kind.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        media = raw.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if body.strip() and media == "application/vnd.kubernetes.protobuf":
            try:  # kubectl sends built-in kinds as protobuf (and does not fall back to JSON on 415)
                body = json.dumps(protobuf.decode(body)).encode()
            except protobuf.UnsupportedProtobuf as exc:
                raise ApiError(
                    415, "UnsupportedMediaType", f"the sandbox cannot decode this protobuf: {exc}"
                ) from None
        query = raw.query
        dry_run = query.get("dryRun") == "All"
        strict = query.get("fieldValidation") == "Strict"
        quiet = query.get("fieldValidation") == "Ignore"
        verb = record.verb
        manager = ssa.manager_name(query.get("fieldManager"), record.user_agent)
        if verb == "watch":
            return await self._watch(raw, route, kind, record)
        if verb == "list":
            record.code = 200
            listing = self._list(kind, route.namespace, query)
            if wants_table(raw, kind):
                include = query.get("includeObject", "Metadata")
                table = build_table(kind, listing["items"], include=include, headers=True, rv=self._rv)
                table["metadata"] = listing["metadata"]
                return json_response(table)
            return json_response(listing)
        if verb == "deletecollection":
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), kind.group, kind.kind)
            gone = [
                self.delete_object(kind, route.namespace, obj["metadata"]["name"], dry_run=dry_run)[0]
                for obj in self.live(kind, route.namespace)
                if selected(obj, labels, fields)
            ]
            record.code = 200
            return json_response(self._list_body(kind, gone))
        if kind.namespaced and route.namespace is None and verb != "create":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if verb == "create":
            if route.name is not None:
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            obj, warnings = self._prepare_create(
                kind, route.namespace, self._body(body), strict=strict, manager=manager
            )
            if not dry_run:
                obj = self._commit(kind, "ADDED", obj, None)
            record.code = 201
            return json_response(obj, 201, () if quiet else warnings)
        assert route.name is not None
        if verb == "get":
            found = self.current(kind, route.namespace, route.name)
            if found is None:
                raise ApiError.not_found(kind, route.name)
            obj = found
            record.code = 200
            if wants_table(raw, kind):
                include = query.get("includeObject", "Metadata")
                return json_response(build_table(kind, [obj], include=include, headers=True, rv=self._rv))
            return json_response(obj)
        if verb == "update":
            new = self._body(body)
            obj, warnings = self.update_object(
                kind,
                route.namespace,
                route.name,
                new,
                route.subresource,
                replace=True,
                dry_run=dry_run,
                strict=strict,
                manager=manager,
            )
            record.code = 200
            return json_response(obj, 200, () if quiet else warnings)
        if verb == "patch" and media == "application/apply-patch+yaml":
            return self._apply(raw, route, kind, body, record, manager=query.get("fieldManager"))
        if verb == "patch":
            change = self._patcher(kind, raw.headers.get("Content-Type", ""), body)
            obj, warnings = self.update_object(
                kind,
                route.namespace,
                route.name,
                change,
                route.subresource,
                dry_run=dry_run,
                strict=strict,
                manager=manager,
            )
            record.code = 200
            return json_response(obj, 200, () if quiet else warnings)
        if verb == "delete":
            options = self._body(body) if body.strip() else {}
            dry_run = dry_run or "All" in ((options or {}).get("dryRun") or [])
            obj, deleted_now = self.delete_object(kind, route.namespace, route.name, options, dry_run=dry_run)
            record.code = 200 if deleted_now else 202
            return json_response(obj, record.code)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _apply(
        self,
        raw: aiohttp.web.BaseRequest,
        route: Route,
        kind: ServedKind,
        body: bytes,
        record: RequestRecord,
        *,
        manager: str | None,
    ) -> aiohttp.web.Response:
        """Server-side apply: merge the applied configuration, 409 on another manager's fields, create if absent."""
        assert route.name is not None
        if not manager:
            raise ApiError.bad_request("PATCH, application/apply-patch+yaml, requires fieldManager to be set")
        try:
            applied = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise ApiError.bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(applied, dict):
            raise ApiError.bad_request("the applied configuration must be an object")
        query = raw.query
        dry_run, strict = query.get("dryRun") == "All", query.get("fieldValidation") == "Strict"
        force = query.get("force", "").lower() == "true"
        old = self.current(kind, route.namespace, route.name)
        applied = self._typed(kind, applied)
        dropped = kind.schema.prune(applied) if kind.schema is not None else []
        if dropped and strict:  # the same refusal as any other write; pruned fields are owned by nobody
            raise self.unknown_fields(kind, dropped)
        try:
            merged = ssa.apply(
                old,
                applied,
                manager=manager,
                force=force,
                subresource=route.subresource,
                schema=kind.schema.openapi if kind.schema is not None else None,
                api_version=kind.api_version,
            )
        except ssa.ApplyConflict as exc:
            causes = [
                {"reason": "FieldManagerConflict", "message": f'conflict with "{who}"', "field": path}
                for who, path in exc.conflicts
            ]
            raise ApiError(409, "Conflict", str(exc), {"causes": causes}) from None
        if old is None:
            merged.setdefault("metadata", {})["name"] = route.name
            obj, warnings = self._prepare_create(kind, route.namespace, merged, strict=strict, applied=True)
            if not dry_run:
                obj = self._commit(kind, "ADDED", obj, None)
            record.code = 201
            return json_response(obj, 201, [*warnings, *(f'unknown field "{p}"' for p in dropped)])
        obj, warnings = self.update_object(
            kind, route.namespace, route.name, merged, route.subresource, dry_run=dry_run, applied=True
        )
        record.code = 200
        return json_response(obj, 200, [*warnings, *(f'unknown field "{p}"' for p in dropped)])

    @staticmethod
    def _body(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ApiError.bad_request(f"the request body is not valid JSON: {exc}") from None

    def _patcher(self, kind: ServedKind, content_type: str, body: bytes) -> Callable[[dict[str, Any]], Any]:
        media = content_type.split(";")[0].strip().lower()
        accepted = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        if media == "application/json-patch+json":
            ops = self._body(body)
            if not isinstance(ops, list):
                raise ApiError.bad_request("a JSON patch must be a list of operations")

            def apply_json_patch(obj: dict[str, Any]) -> Any:
                try:
                    return jsonpatch.JsonPatch(ops).apply(obj)
                except (
                    jsonpatch.JsonPatchException,
                    jsonpointer.JsonPointerException,
                    TypeError,
                    KeyError,
                ) as exc:
                    message = "the server rejected our request due to an error in our request"
                    causes = [{"reason": "UnexpectedServerResponse", "message": str(exc)}]
                    raise ApiError(422, "Invalid", message, {"causes": causes}) from None

            return apply_json_patch
        if media == "application/merge-patch+json" or (
            media == "application/strategic-merge-patch+json" and not kind.custom
        ):
            patch = self._body(body)
            if not isinstance(patch, dict):
                raise ApiError.bad_request("a merge patch must be a JSON object")
            return lambda obj: merge_patch(obj, patch)
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: {accepted}",
        )

    def _list_body(
        self, kind: ServedKind, items: list[dict[str, Any]], meta: dict[str, Any] | None = None
    ) -> dict:
        if not kind.custom:  # built-in lists carry no per-item apiVersion/kind (as kube-apiserver's JSON)
            items = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self._rv), **(meta or {})},
            "items": items,
        }

    def _list(self, kind: ServedKind, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind.group, kind.kind)
        items = [obj for obj in self.live(kind, namespace) if selected(obj, labels, fields)]
        start = 0
        if query.get("continue"):
            try:
                start = int(json.loads(base64.urlsafe_b64decode(query["continue"]))["start"])
            except (ValueError, KeyError, TypeError):
                raise ApiError.bad_request("continue key is not valid") from None
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise ApiError.bad_request(f"invalid limit: {query['limit']!r}") from None
        meta: dict[str, Any] = {}
        page = items[start:]
        if limit > 0 and len(page) > limit:
            page = page[:limit]
            token = json.dumps({"rv": self._rv, "start": start + limit}).encode()
            meta = {
                "continue": base64.urlsafe_b64encode(token).decode(),
                "remainingItemCount": len(items) - start - limit,
            }
        return self._list_body(kind, page, meta)

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, route: Route, kind: ServedKind, record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        query = raw.query
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind.group, kind.kind)
        since_text = query.get("resourceVersion", "")
        try:
            since = int(since_text) if since_text else 0
        except ValueError:
            raise ApiError.bad_request(f"invalid resource version: {since_text!r}") from None
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        initial_events = query.get("sendInitialEvents") == "true"
        bookmarks = query.get("allowWatchBookmarks") == "true"

        # No await between the snapshot and the registration: no event can fall in between.
        watcher = Watcher(kind, route.namespace, route.name, labels, fields)
        if wants_table(raw, kind):
            watcher.table = query.get("includeObject", "Metadata")
        lines: list[bytes] = []
        if since and not initial_events:
            if since < self._compacted_rv:
                expired = ApiError(
                    410, "Expired", f"too old resource version: {since} ({self._compacted_rv})"
                )
                lines.append(json.dumps({"type": "ERROR", "object": expired.status()}).encode() + b"\n")
                watcher.queue.put_nowait(None)
            else:
                for event in self._log:
                    if (
                        event.rv > since
                        and event.kind is kind
                        and (line := watcher.translate(event)) is not None
                    ):
                        lines.append(line)
        else:
            lines.extend(
                watcher.line("ADDED", obj) for obj in self.live(kind, route.namespace) if watcher.matches(obj)
            )
            if initial_events and bookmarks:
                bookmark = {
                    "apiVersion": kind.api_version,
                    "kind": kind.kind,
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                lines.append(watcher.line("BOOKMARK", bookmark))
        if self._closing:
            watcher.queue.put_nowait(None)
        self._watchers.add(watcher)

        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        record.code = 200
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            await response.prepare(raw)
            for line in lines:
                await response.write(line)
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    line = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if line is None:
                    break
                await response.write(line)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away (aiohttp raises ConnectionResetError / RuntimeError on a closed transport)
        finally:
            self._watchers.discard(watcher)
        return response

    def drop_watches(self) -> int:
        """End the open watch streams now, as an apiserver's watch timeout does; clients reconnect."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        return len(self._watchers)

    def close_watches(self) -> None:
        """End every open watch stream and any watch started from now on (the server is going away)."""
        self._closing = True
        self.drop_watches()

    def reopen_watches(self) -> None:
        """Serve watches again (the server is back after an outage)."""
        self._closing = False

    def compact_watch_history(self) -> None:
        """Forget every watch event so far, as etcd's compaction does: a watch from an older resourceVersion
        is answered 410 Expired and the client must list again."""
        self._log.clear()
        self._compacted_rv = self._rv


class LoopbackServer(kmock.Server):
    """kmock.Server without its process-wide aiohttp DNS interceptor.

    kmock.Server monkey-patches ``aiohttp.TCPConnector._resolve_host`` for the whole process and raises
    unless servers exit in LIFO order; the sandbox runs servers in their own threads and is dialled by IP,
    so it needs neither.
    """

    async def __aenter__(self) -> Self:
        server = aiohttp.test_utils.RawTestServer(self.handler, host=self._host, port=self._port)
        await server.start_server()
        assert server.runner is not None
        server.runner._shutdown_timeout = 2.0  # open watches are ended before; never wait aiohttp's 60 s
        self._managed_server = server
        self.handler.servers.append(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.handler.servers.remove(self)
        assert self._managed_server is not None
        await self._managed_server.close()
        self._managed_server = None

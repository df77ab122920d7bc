"""Property tests: random CACHES documents in both indentation styles keep every non-LOCATION byte.

The generator renders a small model (aliases, backends, LOCATION shapes, quoting, extra keys, comments, trap
values that look like endpoints) and also renders the *expected* rewrite of that model, so each example is
checked against an exact answer as well as against the general properties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edx_remote_cache.domain.rewrite import revert, rewrite

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MEMCACHED_BACKENDS = [
    "django.core.cache.backends.memcached.MemcachedCache",
    "django.core.cache.backends.memcached.PyMemcacheCache",
    "django.core.cache.backends.memcached.PyLibMCCache",
    "django_pylibmc.memcached.PyLibMCCache",
    "django_elasticache.memcached.ElastiCache",
]
OTHER_BACKENDS = [
    "django_redis.cache.RedisCache",
    "django.core.cache.backends.redis.RedisCache",
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.db.DatabaseCache",
    "django.core.cache.backends.dummy.DummyCache",
]
TARGETS = st.lists(
    st.sampled_from(["172.31.5.10:11211", "172.31.5.11:11211", "cache-1.internal:11311", "10.0.0.9:11211"]),
    min_size=1,
    max_size=3,
    unique=True,
)
ALIASES = st.lists(st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), min_size=1, max_size=5, unique=True)


@dataclass
class Location:
    form: str  # block | flow | plain | single | double
    entries: list[tuple[str, str]]  # (value, quoting of that item: plain | single | double)
    comment: bool = False  # trailing comment on the first block item
    separator: str = ";"  # for string forms


@dataclass
class Cache:
    alias: str
    backend: str
    location: Location | None
    extras: list[str] = field(default_factory=list)  # "KEY: value" lines (may be comments)
    location_at: int = 0

    @property
    def memcached(self) -> bool:
        return self.backend in MEMCACHED_BACKENDS


@dataclass
class Doc:
    indent: int  # mapping indentation
    dash: int  # extra indentation of "- " under its key (0 = to_nice_yaml style)
    before: list[str]
    caches: list[Cache]
    memcache_var: Location | None
    after: list[str]
    port: int = 11211


# ------------------------------------------------------------------------------------------------ rendering


def _quote(value: str, style: str) -> str:
    if style == "single":
        return f"'{value}'"
    if style == "double":
        return f'"{value}"'
    return value


def _location_lines(loc: Location, key: str, pad: str, dash: int) -> list[str]:
    if loc.form == "block":
        item_pad = pad + " " * dash
        lines = [f"{pad}{key}:"]
        for i, (value, style) in enumerate(loc.entries):
            lines.append(
                f"{item_pad}- {_quote(value, style)}" + ("  # primary" if loc.comment and i == 0 else "")
            )
        return lines
    if loc.form == "flow":
        return [f"{pad}{key}: [" + ", ".join(_quote(v, s) for v, s in loc.entries) + "]"]
    joined = loc.separator.join(v for v, _ in loc.entries)
    return [f"{pad}{key}: {_quote(joined, loc.form)}"]


def render(doc: Doc) -> str:
    ind = " " * doc.indent
    lines = list(doc.before)
    lines.append("CACHES:")
    for cache in doc.caches:
        lines.append(f"{ind}{cache.alias}:")
        body = [f"{ind * 2}BACKEND: {cache.backend}"] + [f"{ind * 2}{extra}" for extra in cache.extras]
        if cache.location is not None:
            at = min(cache.location_at, len(body))
            body[at:at] = _location_lines(cache.location, "LOCATION", ind * 2, doc.dash)
        lines.extend(body)
    if doc.memcache_var is not None:
        lines.extend(_location_lines(doc.memcache_var, "EDXAPP_MEMCACHE", "", doc.dash))
    lines.extend(doc.after)
    return "\n".join(lines) + "\n"


def _local(value: str, port: int) -> bool:
    return value in {f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}


def repoint(loc: Location, match: Any, to: list[str]) -> Location:
    """The model of a rewrite: matched entries become ``to`` in the matched item's quoting, duplicates go."""
    if not any(match(v) for v, _ in loc.entries):
        return loc
    seen: set[str] = set()
    entries: list[tuple[str, str]] = []
    comment = False
    for i, (value, style) in enumerate(loc.entries):
        for new in to if match(value) else [value]:
            if new not in seen:
                seen.add(new)
                entries.append((new, style))
                comment = comment or (loc.comment and i == 0 and len(entries) == 1)
    if [v for v, _ in entries] == [v for v, _ in loc.entries]:
        return loc
    separator = loc.separator if len(loc.entries) > 1 else ";"  # a lone endpoint shows no separator to reuse
    return replace(loc, entries=entries, comment=comment, separator=separator)


def expected(doc: Doc, match: Any, to: list[str]) -> Doc:
    caches = [
        replace(c, location=repoint(c.location, match, to)) if c.memcached and c.location else c
        for c in doc.caches
    ]
    var = repoint(doc.memcache_var, match, to) if doc.memcache_var else None
    return replace(doc, caches=caches, memcache_var=var)


# ----------------------------------------------------------------------------------------------- generation


def _needs_quotes(value: str) -> bool:
    return value.startswith("[")


@st.composite
def locations(draw: st.DrawFn, pool: list[str], max_entries: int = 3) -> Location:
    form = draw(st.sampled_from(["block", "flow", "plain", "single", "double"]))
    values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=max_entries))
    entries = []
    for value in values:
        style = draw(st.sampled_from(["plain", "single", "double"]))
        entries.append((value, "single" if style == "plain" and _needs_quotes(value) else style))
    if form == "plain" and _needs_quotes(values[0]):
        form = "single"
    return Location(
        form=form,
        entries=entries,
        comment=form == "block" and draw(st.booleans()),
        separator=draw(st.sampled_from([";", ",", "; ", ", "])),
    )


EXTRAS = [
    "KEY_FUNCTION: util.memcache.safe_key",
    "KEY_PREFIX: dev.celery",
    "KEY_PREFIX: 'localhost:11211'",
    "TIMEOUT: '7200'",
    "TIMEOUT: 300",
    'VERSION: "1"',
    "OPTIONS: null",
    "OPTIONS: ~",
    "OPTIONS:",
    "OPTIONS: {no_delay: true, ignore_exc: true}",
    "# LOCATION used to be localhost:11211",
]
TOP_LEVEL = [
    "# generated by ansible: localhost:11211",
    "PLATFORM_NAME: Académie Numérique",
    'PLATFORM_DESCRIPTION: "教育 — تعلم 😀"',
    "MEMCACHE_NOTE: localhost:11211",
    "EMAIL_HOST: localhost",
    "EMPTY:",
    "TILDE: ~",
    "NOTHING: null",
    "QUOTED: '7200'",
    "FLAG: true",
    f'JWK: \'{{"keys": [{{"kid": "k", "n": "{"A" * 240}"}}]}}\'',
    "BLOCK: |\n  first\n  - localhost:11211\n  last",
    "FOLDED: >\n  folded localhost:11211\n  text",
    "QUEUES:\n- localhost:11211\n- edx.lms.core.default",
]


@st.composite
def documents(draw: st.DrawFn, local_only: bool = False) -> Doc:
    port = draw(st.sampled_from([11211, 11211, 11212]))
    local = [f"localhost:{port}"]
    pool = (
        local
        if local_only
        else [*local, f"127.0.0.1:{port}", f"[::1]:{port}", "10.0.0.9:11211", "localhost:11299"]
    )
    caches = []
    for alias in draw(ALIASES):
        memcached = draw(st.booleans()) or local_only
        backend = draw(st.sampled_from(MEMCACHED_BACKENDS if memcached else OTHER_BACKENDS))
        if local_only and memcached:
            location: Location | None = draw(locations(local, max_entries=1))
        else:
            location = draw(st.one_of(st.none(), locations(pool)))
        extras = draw(st.lists(st.sampled_from(EXTRAS), max_size=4, unique_by=lambda e: e.split(":")[0]))
        caches.append(Cache(alias, backend, location, extras, draw(st.integers(0, len(extras)))))
    var_pool = local if local_only else pool
    var = draw(st.one_of(st.none(), locations(var_pool, max_entries=1 if local_only else 3)))
    return Doc(
        indent=draw(st.sampled_from([2, 4])),
        dash=draw(st.sampled_from([0, 2])),
        before=draw(st.lists(st.sampled_from(TOP_LEVEL), max_size=4, unique=True)),
        caches=caches,
        memcache_var=var,
        after=draw(st.lists(st.sampled_from(TOP_LEVEL), max_size=4, unique=True)),
        port=port,
    )


def _location_line_numbers(doc: Doc) -> set[int]:
    """0-based numbers of the lines that hold LOCATION / EDXAPP_MEMCACHE values in ``render(doc)``."""
    numbers = set()
    for i, line in enumerate(render(doc).split("\n")):
        if re.match(r"\s*(LOCATION|EDXAPP_MEMCACHE):", line) or re.fullmatch(
            r"\s*- ['\"]?[\w.:\[\]]+['\"]?(  # primary)?", line
        ):
            numbers.add(i)
    return numbers


def _is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


# ---------------------------------------------------------------------------------------------- properties


@SETTINGS
@given(doc=documents(), to=TARGETS)
def test_rewrite_matches_the_model_and_touches_only_location_lines(doc: Doc, to: list[str]) -> None:
    text = render(doc)
    result = rewrite(text, to=to, port=doc.port)

    want = render(expected(doc, lambda v: _local(v, doc.port), to))
    assert result.text == want

    loc_lines = _location_line_numbers(doc)
    kept = [line for i, line in enumerate(text.split("\n")) if i not in loc_lines]
    assert _is_subsequence(kept, result.text.split("\n"))
    assert result.changed == bool(result.changes) == (want != text)


@SETTINGS
@given(doc=documents(), to=TARGETS)
def test_loaded_data_differs_only_in_memcached_locations(doc: Doc, to: list[str]) -> None:
    text = render(doc)
    result = rewrite(text, to=to, port=doc.port)
    before, after = yaml.safe_load(text), yaml.safe_load(result.text)
    changed = {c.alias for c in result.changes}
    for cache in doc.caches:
        key = f"CACHES.{cache.alias}"
        if key in changed:
            assert cache.memcached
            assert before["CACHES"][cache.alias].pop("LOCATION") != after["CACHES"][cache.alias].pop(
                "LOCATION"
            )
    if "EDXAPP_MEMCACHE" in changed:
        del before["EDXAPP_MEMCACHE"], after["EDXAPP_MEMCACHE"]
    assert before == after


@SETTINGS
@given(doc=documents(), to=TARGETS)
def test_rewrite_is_idempotent(doc: Doc, to: list[str]) -> None:
    once = rewrite(render(doc), to=to, port=doc.port)
    twice = rewrite(once.text, to=to, port=doc.port)
    assert twice.text == once.text
    assert twice.changes == ()


@SETTINGS
@given(doc=documents(local_only=True), to=TARGETS)
def test_revert_after_rewrite_is_the_identity_for_localhost_sites(doc: Doc, to: list[str]) -> None:
    text = render(doc)
    moved = rewrite(text, to=to, port=doc.port).text
    assert revert(moved, current=to, port=doc.port).text == text
    assert revert(moved, port=doc.port).text == text

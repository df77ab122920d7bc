"""The rewrite engine: only memcached endpoint values change, byte for byte, and nothing is half done."""

from __future__ import annotations

import difflib
import importlib.resources
import re
from typing import Any

import pytest
import yaml

from edx_remote_cache.domain.rewrite import (
    CacheChange,
    RewriteError,
    format_endpoint,
    local_endpoints,
    parse_endpoint,
    revert,
    rewrite,
)

REMOTE = "172.31.5.10:11211"
REMOTE2 = "172.31.5.11:11211"
MEMCACHED = "django.core.cache.backends.memcached.MemcachedCache"
FIXTURES = {  # name -> settings expected to change
    "lms.yml": 7,
    "studio.yml": 7,
    "ecommerce.yml": 1,
    "insights.yml": 1,
    "lms_lilac_pymemcache.yml": 7,
    "server-vars.yml": 3,
}


def fixture(name: str) -> str:
    return (importlib.resources.files("edx_remote_cache") / "data" / "edx" / name).read_text(encoding="utf-8")


def diff_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines of a line diff."""
    removed, added = [], []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line.startswith("-") else added).append(line[1:])
    return removed, added


_ENDPOINT_LINE = re.compile(
    r"""\s*(-\s+['"]?[\w.:\[\]-]+['"]?\s*(\#.*)?|LOCATION:\s.*|[A-Z_]+_MEMCACHE:\s.*)"""
)


def assert_only_endpoint_lines(old: str, new: str) -> None:
    removed, added = diff_lines(old, new)
    assert removed or added
    for line in removed + added:
        assert _ENDPOINT_LINE.fullmatch(line), f"non-endpoint line changed: {line!r}"


def _local(entry: str) -> bool:
    return entry.strip() in local_endpoints()


def expected_data(data: Any, to: list[str]) -> Any:
    """What safe_load should see after a rewrite: an independent oracle working on loaded data."""

    def repoint(entries: list[str]) -> list[str]:
        out: list[str] = []
        for entry in entries:
            for value in to if _local(entry) else [entry]:
                if value not in out:
                    out.append(value)
        return out

    def fix(location: Any) -> Any:
        if isinstance(location, list):
            return repoint(location)
        separator = re.search(r"\s*[;,]\s*", location)
        parts = [p.strip() for p in re.split(r"[;,]", location) if p.strip()]
        return (separator.group(0) if separator else ";").join(repoint(parts))

    def has_local(location: Any) -> bool:
        entries = re.split(r"[;,]", location) if isinstance(location, str) else location
        return any(_local(e) for e in entries)

    for key, value in data.items():
        if key == "CACHES":
            for cache in value.values():
                memcached = "memcached" in cache.get("BACKEND", "").lower()
                if memcached and has_local(cache.get("LOCATION", [])):
                    cache["LOCATION"] = fix(cache["LOCATION"])
        elif key.endswith("_MEMCACHE") and isinstance(value, list) and has_local(value):
            data[key] = fix(value)
    return data


# ------------------------------------------------------------------------------------------------ fixtures


def test_fixtures_ship_as_package_data() -> None:
    for name in FIXTURES:
        text = fixture(name)
        assert yaml.safe_load(text), name
    lms = yaml.safe_load(fixture("lms.yml"))
    assert set(lms["CACHES"]) == {
        "celery",
        "configuration",
        "course_structure_cache",
        "default",
        "general",
        "mongo_metadata_inheritance",
        "staticfiles",
    }
    assert lms["CACHES"]["celery"]["TIMEOUT"] == "7200"
    assert any(len(line) > 200 for line in fixture("lms.yml").splitlines())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_fixture_changes_only_endpoint_lines(name: str) -> None:
    original = fixture(name)
    result = rewrite(original, to=[REMOTE])
    assert result.changed
    assert len(result.changes) == FIXTURES[name]
    assert_only_endpoint_lines(original, result.text)
    assert yaml.safe_load(result.text) == expected_data(yaml.safe_load(original), [REMOTE])


def test_koa_lms_diff_is_exactly_the_seven_location_items() -> None:
    original = fixture("lms.yml")
    result = rewrite(original, to=[REMOTE])
    removed, added = diff_lines(original, result.text)
    assert removed == ["        - localhost:11211"] * 7
    assert added == [f"        - {REMOTE}"] * 7
    assert len(result.text.splitlines()) == len(original.splitlines())


def test_seed_sites_count_of_endpoint_changes() -> None:
    files = ["lms.yml", "studio.yml", "ecommerce.yml", "insights.yml"]
    counts = [len(rewrite(fixture(f), to=[REMOTE]).changes) for f in files]
    assert counts == [7, 7, 1, 1]
    insights = rewrite(fixture("insights.yml"), to=[REMOTE])
    assert insights.changes == (CacheChange("CACHES.default", ("127.0.0.1:11211",), (REMOTE,)),)


def test_server_vars_memcache_lists_keep_their_own_style() -> None:
    original = fixture("server-vars.yml")
    result = rewrite(original, to=[REMOTE, REMOTE2])
    assert [c.alias for c in result.changes] == ["EDXAPP_MEMCACHE", "ECOMMERCE_MEMCACHE", "INSIGHTS_MEMCACHE"]
    assert f"EDXAPP_MEMCACHE:\n  - '{REMOTE}'\n  - '{REMOTE2}'\n" in result.text
    assert f"ECOMMERCE_MEMCACHE: ['{REMOTE}', '{REMOTE2}']\n" in result.text
    assert f"INSIGHTS_MEMCACHE: [ '{REMOTE}', '{REMOTE2}' ]\n" in result.text
    # a jinja reference that merely ends in _MEMCACHE is not an endpoint list
    assert 'EDXAPP_CACHE_COURSE_STRUCTURE_MEMCACHE: "{{ EDXAPP_MEMCACHE }}"' in result.text


def test_lilac_redis_and_locmem_caches_are_untouched() -> None:
    original = fixture("lms_lilac_pymemcache.yml")
    result = rewrite(original, to=[REMOTE])
    assert "CACHES.sessions" not in {c.alias for c in result.changes}
    assert "CACHES.ora2-storage" not in {c.alias for c in result.changes}
    loaded = yaml.safe_load(result.text)["CACHES"]
    assert loaded["sessions"]["LOCATION"] == "redis://localhost:6379/1"
    assert loaded["ora2-storage"]["LOCATION"] == "ora2-storage"
    assert loaded["default"]["LOCATION"] == REMOTE  # a string LOCATION stays a string
    assert loaded["celery"]["LOCATION"] == [REMOTE]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_rewrite_is_idempotent(name: str) -> None:
    once = rewrite(fixture(name), to=[REMOTE, REMOTE2])
    twice = rewrite(once.text, to=[REMOTE, REMOTE2])
    assert not twice.changed
    assert twice.changes == ()
    assert twice.text == once.text


@pytest.mark.parametrize("name", sorted(set(FIXTURES) - {"insights.yml", "server-vars.yml"}))
def test_revert_undoes_rewrite_byte_for_byte(name: str) -> None:
    original = fixture(name)
    moved = rewrite(original, to=[REMOTE, REMOTE2]).text
    assert revert(moved, current=[REMOTE, REMOTE2]).text == original
    assert revert(moved).text == original  # no list: every remote endpoint goes back


def test_revert_points_127_0_0_1_back_at_localhost() -> None:
    original = fixture("insights.yml")
    back = revert(rewrite(original, to=[REMOTE]).text).text
    removed, added = diff_lines(original, back)
    assert (removed, added) == (["        - 127.0.0.1:11211"], ["        - localhost:11211"])


# ----------------------------------------------------------------------------------------- LOCATION shapes


def cache_doc(location: str, backend: str = MEMCACHED) -> str:
    return f"CACHES:\n    default:\n        BACKEND: {backend}\n        LOCATION: {location}\n        TIMEOUT: '7200'\n"


def location_of(text: str, alias: str = "default") -> Any:
    return yaml.safe_load(text)["CACHES"][alias]["LOCATION"]


def test_string_location_with_several_endpoints_keeps_other_servers() -> None:
    result = rewrite(cache_doc("localhost:11211;10.0.0.9:11211"), to=[REMOTE])
    assert result.text == cache_doc(f"{REMOTE};10.0.0.9:11211")
    assert result.changes == (
        CacheChange("CACHES.default", ("localhost:11211", "10.0.0.9:11211"), (REMOTE, "10.0.0.9:11211")),
    )


@pytest.mark.parametrize(
    ("before", "to", "after"),
    [
        ("'localhost:11211, 10.0.0.9:11211'", [REMOTE], f"'{REMOTE}, 10.0.0.9:11211'"),
        ('"10.0.0.9:11211,localhost:11211"', [REMOTE], f'"10.0.0.9:11211,{REMOTE}"'),
        ("127.0.0.1:11211;localhost:11211", [REMOTE], REMOTE),  # two spellings of one local server collapse
        ("localhost:11211", [REMOTE, REMOTE2], f"{REMOTE};{REMOTE2}"),
        ("'localhost:11211'", [REMOTE, REMOTE2], f"'{REMOTE};{REMOTE2}'"),
    ],
)
def test_separated_strings_keep_separator_and_quoting(before: str, to: list[str], after: str) -> None:
    assert rewrite(cache_doc(before), to=to).text == cache_doc(after)


def test_several_targets_expand_a_block_list_in_its_own_style() -> None:
    doc = "CACHES:\n    default:\n        BACKEND: x.memcached.PyMemcacheCache\n        LOCATION:\n        - 'localhost:11211'  # primary\n        VERSION: '1'\n"
    result = rewrite(doc, to=[REMOTE, REMOTE2, "[fd00::5]:11211"])
    assert result.text == (
        "CACHES:\n    default:\n        BACKEND: x.memcached.PyMemcacheCache\n        LOCATION:\n"
        f"        - '{REMOTE}'  # primary\n        - '{REMOTE2}'\n        - '[fd00::5]:11211'\n        VERSION: '1'\n"
    )


def test_ipv6_target_is_quoted_where_plain_would_not_parse() -> None:
    result = rewrite(cache_doc("[localhost:11211]"), to=["[fd00::5]:11211"])
    assert location_of(result.text) == ["[fd00::5]:11211"]
    result = rewrite(cache_doc("localhost:11211"), to=["[fd00::5]:11211"])
    assert result.text == cache_doc("'[fd00::5]:11211'")


def test_from_replaces_a_previous_remote_endpoint() -> None:
    doc = cache_doc("['10.0.0.1:11211', 10.0.0.9:11211]")
    assert not rewrite(doc, to=[REMOTE]).changed  # not local: left alone without --from
    result = rewrite(doc, to=[REMOTE], replace=["10.0.0.1:11211"])
    assert result.text == cache_doc(f"['{REMOTE}', 10.0.0.9:11211]")


def test_duplicates_are_removed_and_order_kept() -> None:
    doc = "CACHES:\n  default:\n    BACKEND: django_pylibmc.memcached.PyLibMCCache\n    LOCATION:\n    - localhost:11211\n    - a.internal:11211\n    - 127.0.0.1:11211\n    - 10.0.0.9:11211\n"
    result = rewrite(doc, to=["10.0.0.9:11211", REMOTE])
    assert location_of(result.text) == ["10.0.0.9:11211", REMOTE, "a.internal:11211"]
    assert_only_endpoint_lines(doc, result.text)


@pytest.mark.parametrize(
    "backend",
    [
        "django_redis.cache.RedisCache",
        "django.core.cache.backends.redis.RedisCache",
        "django.core.cache.backends.locmem.LocMemCache",
        "django.core.cache.backends.db.DatabaseCache",
        "django.core.cache.backends.filebased.FileBasedCache",
        "django.core.cache.backends.dummy.DummyCache",
    ],
)
def test_non_memcached_backends_are_left_alone_even_on_localhost(backend: str) -> None:
    doc = cache_doc("localhost:11211", backend=backend)
    result = rewrite(doc, to=[REMOTE])
    assert result.text == doc
    assert result.changes == ()


@pytest.mark.parametrize(
    "backend",
    [
        "django.core.cache.backends.memcached.MemcachedCache",
        "django.core.cache.backends.memcached.PyMemcacheCache",
        "django.core.cache.backends.memcached.PyLibMCCache",
        "django_pylibmc.memcached.PyLibMCCache",
        "django_elasticache.memcached.ElastiCache",
    ],
)
def test_memcached_backends_are_rewritten(backend: str) -> None:
    assert rewrite(cache_doc("localhost:11211", backend=backend), to=[REMOTE]).changes[0].new == (REMOTE,)


def test_anchor_shared_by_several_caches_is_rewritten_once_and_reported_per_cache() -> None:
    doc = (
        "memcache_servers: &memcache_servers\n"
        "- localhost:11211\n"
        "CACHES:\n"
        "    default: &memcached\n"
        f"        BACKEND: {MEMCACHED}\n"
        "        LOCATION: *memcache_servers\n"
        "    general:\n"
        "        <<: *memcached\n"
        "        KEY_PREFIX: general\n"
        "    staticfiles:\n"
        f"        BACKEND: {MEMCACHED}\n"
        "        LOCATION: *memcache_servers\n"
    )
    result = rewrite(doc, to=[REMOTE])
    assert [c.alias for c in result.changes] == ["CACHES.default", "CACHES.general", "CACHES.staticfiles"]
    assert diff_lines(doc, result.text) == (["- localhost:11211"], [f"- {REMOTE}"])
    loaded = yaml.safe_load(result.text)["CACHES"]
    assert loaded["general"]["LOCATION"] == loaded["staticfiles"]["LOCATION"] == [REMOTE]
    assert revert(result.text).text == doc


def test_merge_key_override_wins_over_merged_location() -> None:
    doc = (
        "base: &base\n  BACKEND: django.core.cache.backends.memcached.PyMemcacheCache\n  LOCATION: other:11211\n"
        "CACHES:\n  default:\n    <<: *base\n    LOCATION: localhost:11211\n"
    )
    result = rewrite(doc, to=[REMOTE])
    assert diff_lines(doc, result.text) == (["    LOCATION: localhost:11211"], [f"    LOCATION: {REMOTE}"])


def test_two_space_style_with_indented_dashes_keeps_its_indentation() -> None:
    doc = (
        "# hand-written, 2-space style\n"
        "CACHES:\n"
        "  default:\n"
        f"    BACKEND: {MEMCACHED}\n"
        "    LOCATION:\n"
        "      - localhost:11211\n"
        "    OPTIONS:\n"
        "      server_max_value_length: 1048576\n"
        "  general:\n"
        f"    BACKEND: {MEMCACHED}\n"
        "    LOCATION:\n"
        '      - "localhost:11211"\n'
        "FEATURES: {ENABLE_X: true}\n"
    )
    result = rewrite(doc, to=[REMOTE, REMOTE2])
    assert result.text == doc.replace(
        "      - localhost:11211\n", f"      - {REMOTE}\n      - {REMOTE2}\n"
    ).replace('      - "localhost:11211"\n', f'      - "{REMOTE}"\n      - "{REMOTE2}"\n')
    assert revert(result.text, current=[REMOTE, REMOTE2]).text == doc


def test_everything_but_location_survives_byte_for_byte() -> None:
    doc = (
        "\ufeff# leading comment with localhost:11211 in it\n"
        "NOTE: localhost:11211\n"
        "EMPTY:\n"
        "TILDE: ~\n"
        "NULL: null\n"
        "QUOTED_INT: '7200'\n"
        'DOUBLE: "Académie Numérique 日本語 😀"\n'
        f"LONG: '{'x' * 300}'\n"
        "BLOCK: |\n  first line\n  - localhost:11211\n"
        "FOLDED: >\n  folded\n  text\n"
        "QUEUES:\n- localhost:11211\n"
        "CACHES:\n"
        "    default:\n"
        f"        BACKEND: {MEMCACHED}\n"
        "        LOCATION:   # where memcached lives\n"
        "        - localhost:11211   # the only one\n"
        "        TIMEOUT: '7200'\n"
        "    'quoted alias':\n"
        f"        BACKEND: {MEMCACHED}\n"
        '        LOCATION: "localhost:11211"\n'
        "TRAILING: [1, 2]"  # no final newline
    )
    result = rewrite(doc, to=[REMOTE])
    expected = doc.replace("- localhost:11211   # the only one", f"- {REMOTE}   # the only one").replace(
        'LOCATION: "localhost:11211"', f'LOCATION: "{REMOTE}"'
    )
    assert result.text == expected
    assert [c.alias for c in result.changes] == ["CACHES.default", "CACHES.quoted alias"]
    assert revert(result.text).text == doc


def test_crlf_files_stay_crlf() -> None:
    doc = cache_doc("\r\n        - localhost:11211").replace("\n", "\r\n").replace("\r\r\n", "\r\n")
    result = rewrite(doc, to=[REMOTE, REMOTE2])
    assert f"        - {REMOTE}\r\n        - {REMOTE2}\r\n" in result.text
    assert result.text.count("\r\n") == result.text.count("\n")
    assert revert(result.text).text == doc


def test_last_line_without_newline_can_be_expanded_and_collapsed() -> None:
    doc = f"CACHES:\n  default:\n    BACKEND: {MEMCACHED}\n    LOCATION:\n    - localhost:11211"
    result = rewrite(doc, to=[REMOTE, REMOTE2])
    assert result.text == doc.replace("- localhost:11211", f"- {REMOTE}\n    - {REMOTE2}")
    assert revert(result.text).text == doc
    assert result.unified_diff("lms.yml").endswith("\\ No newline at end of file\n")


def test_nested_caches_and_multiple_documents_are_found() -> None:
    doc = (
        "---\nEDXAPP_LMS_ENV_EXTRA:\n  CACHES:\n    default:\n"
        f"      BACKEND: {MEMCACHED}\n      LOCATION: ['localhost:11211']\n"
        "---\nEDXAPP_MEMCACHE: 'localhost:11211'\n"
    )
    result = rewrite(doc, to=[REMOTE])
    assert [c.alias for c in result.changes] == ["EDXAPP_LMS_ENV_EXTRA.CACHES.default", "EDXAPP_MEMCACHE"]
    assert list(yaml.safe_load_all(result.text)) == [
        {"EDXAPP_LMS_ENV_EXTRA": {"CACHES": {"default": {"BACKEND": MEMCACHED, "LOCATION": [REMOTE]}}}},
        {"EDXAPP_MEMCACHE": REMOTE},
    ]


def test_custom_port() -> None:
    doc = cache_doc("[localhost:11211, localhost:11212]")
    result = rewrite(doc, to=[REMOTE], port=11212)
    assert location_of(result.text) == ["localhost:11211", REMOTE]
    assert revert(result.text, port=11212).text == doc


def test_revert_without_current_reverts_every_remote_entry_of_memcached_caches_only() -> None:
    doc = (
        "CACHES:\n"
        f"  default: {{BACKEND: {MEMCACHED}, LOCATION: [10.0.0.1:11211, 10.0.0.2:11211]}}\n"
        "  sessions: {BACKEND: django_redis.cache.RedisCache, LOCATION: 'redis://10.0.0.3:6379/1'}\n"
    )
    result = revert(doc)
    assert location_of(result.text) == ["localhost:11211"]
    assert location_of(result.text, "sessions") == "redis://10.0.0.3:6379/1"
    only_first = revert(doc, current=["10.0.0.1:11211"])
    assert location_of(only_first.text) == ["localhost:11211", "10.0.0.2:11211"]


# ------------------------------------------------------------------------------------------ nothing to do


def test_file_without_memcached_is_nothing_to_do() -> None:
    doc = "# ecommerce worker\nBROKER_URL: amqp://localhost:5672\nCACHES:\n  default:\n    BACKEND: django.core.cache.backends.locmem.LocMemCache\n"
    result = rewrite(doc, to=[REMOTE])
    assert (result.changed, result.changes, result.text, result.unified_diff("x.yml")) == (False, (), doc, "")
    assert not rewrite("", to=[REMOTE]).changed
    assert not rewrite("just a string\n", to=[REMOTE]).changed


def test_keeping_local_memcached_next_to_the_remote_one_is_stable() -> None:
    once = rewrite(fixture("ecommerce.yml"), to=["localhost:11211", REMOTE])
    assert once.changes == (CacheChange("CACHES.default", ("localhost:11211",), ("localhost:11211", REMOTE)),)
    again = rewrite(once.text, to=["localhost:11211", REMOTE])
    assert (again.changed, again.changes) == (False, ())


def test_already_remote_is_nothing_to_do() -> None:
    moved = rewrite(fixture("lms.yml"), to=[REMOTE]).text
    assert rewrite(moved, to=[REMOTE]).changes == ()


# ----------------------------------------------------------------------------------------------- errors


def test_malformed_yaml_names_the_line() -> None:
    doc = "CACHES:\n  default:\n    BACKEND: x\n   LOCATION: [localhost:11211\nOTHER: 1\n"
    with pytest.raises(RewriteError) as info:
        rewrite(doc, to=[REMOTE])
    assert info.value.line == 4
    assert str(info.value).startswith("line 4: malformed YAML")


def test_unclosed_quote_is_reported_not_half_rewritten() -> None:
    doc = cache_doc("localhost:11211") + "BROKEN: 'oops\n"
    with pytest.raises(RewriteError) as info:
        rewrite(doc, to=[REMOTE])
    assert info.value.line is not None and info.value.line >= 6


@pytest.mark.parametrize("caches", ["[localhost:11211]", "localhost:11211", "null", ""])
def test_non_mapping_caches_is_an_error_naming_it(caches: str) -> None:
    doc = f"PLATFORM_NAME: x\nCACHES: {caches}\n"
    with pytest.raises(RewriteError, match=r"line 2: CACHES must be a mapping"):
        rewrite(doc, to=[REMOTE])


def test_non_mapping_cache_entry_is_an_error() -> None:
    with pytest.raises(RewriteError, match=r"CACHES.default must be a mapping"):
        rewrite("CACHES:\n  default: localhost:11211\n", to=[REMOTE])


def test_unsupported_location_shapes_fail_whole_file() -> None:
    good = cache_doc("localhost:11211")
    bad = (
        good
        + "OTHER:\n  CACHES:\n    x:\n      BACKEND: "
        + MEMCACHED
        + "\n      LOCATION: |\n        localhost:11211\n"
    )
    with pytest.raises(RewriteError, match="block scalar"):
        rewrite(bad, to=[REMOTE])
    with pytest.raises(RewriteError, match="must be a string or a list"):
        rewrite(cache_doc("{host: localhost}"), to=[REMOTE])


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "localhost",
        "::1:11211",
        "host:0",
        "host:99999",
        "redis://h:1",
        "a b:1",
        "[nothost]:1",
        "999.1.1.1:11211",
    ],
)
def test_bad_endpoints_are_rejected_with_a_reason(bad: str) -> None:
    with pytest.raises(RewriteError, match="endpoint"):
        parse_endpoint(bad)
    with pytest.raises(RewriteError):
        rewrite(cache_doc("localhost:11211"), to=[bad])


def test_endpoint_parsing_and_formatting() -> None:
    assert parse_endpoint(" 10.0.0.5:11211 ") == ("10.0.0.5", 11211)
    assert parse_endpoint("[::1]:11211") == ("::1", 11211)
    assert parse_endpoint("cache-1.internal:11311") == ("cache-1.internal", 11311)
    assert format_endpoint("::1", 11211) == "[::1]:11211"
    assert format_endpoint(*parse_endpoint("[fd00::5]:11211")) == "[fd00::5]:11211"
    assert local_endpoints(11212) == {"localhost:11212", "127.0.0.1:11212", "[::1]:11212", "::1:11212"}


def test_local_spellings_all_match() -> None:
    for spelling in [
        "localhost:11211",
        "LOCALHOST:11211",
        "127.0.0.1:11211",
        "'[::1]:11211'",
        "localhost",
        "inet:localhost:11211",
    ]:
        result = rewrite(cache_doc(f"[{spelling}]"), to=[REMOTE])
        assert location_of(result.text) == [REMOTE], spelling
    assert not rewrite(cache_doc("unix:/var/run/memcached.sock"), to=[REMOTE]).changed


def test_empty_target_list_is_an_error() -> None:
    with pytest.raises(RewriteError, match="at least one"):
        rewrite(cache_doc("localhost:11211"), to=[])


# -------------------------------------------------------------------------------- revert to the original spelling


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_revert_with_the_replaced_spellings_restores_every_fixture_byte_for_byte(name: str) -> None:
    original = fixture(name)
    moved = rewrite(original, to=[REMOTE, REMOTE2])
    back = revert(moved.text, current=[REMOTE, REMOTE2], local=moved.replaced_local)
    assert back.text == original
    if name != "server-vars.yml":  # its "{{ EDXAPP_MEMCACHE }}" is not local: reverted without `current`
        assert revert(moved.text, local=moved.replaced_local).text == original
    again = revert(back.text, current=[REMOTE, REMOTE2], local=moved.replaced_local)
    assert (again.changed, again.changes) == (False, ())


def test_replaced_local_names_the_spelling_each_alias_had() -> None:
    moved = rewrite(fixture("server-vars.yml"), to=[REMOTE])
    assert moved.replaced_local == {
        "EDXAPP_MEMCACHE": "localhost:11211",
        "ECOMMERCE_MEMCACHE": "localhost:11211",
        "INSIGHTS_MEMCACHE": "127.0.0.1:11211",
    }
    assert rewrite(fixture("insights.yml"), to=[REMOTE]).replaced_local == {
        "CACHES.default": "127.0.0.1:11211"
    }
    # a remote endpoint replaced by another (a re-target) and a local one kept in place are not "replaced local"
    retarget = rewrite(cache_doc(f"[{REMOTE}]"), to=[REMOTE2], replace=[REMOTE])
    assert retarget.changed and retarget.replaced_local == {}
    kept = rewrite(fixture("ecommerce.yml"), to=["localhost:11211", REMOTE])
    assert kept.changed and kept.replaced_local == {}


def test_revert_writes_one_spelling_for_the_whole_file_or_one_per_alias() -> None:
    original = fixture("server-vars.yml")
    moved = rewrite(original, to=[REMOTE]).text
    whole = revert(moved, current=[REMOTE], local="127.0.0.1:11211")
    assert yaml.safe_load(whole.text)["EDXAPP_MEMCACHE"] == ["127.0.0.1:11211"]
    assert yaml.safe_load(whole.text)["INSIGHTS_MEMCACHE"] == ["127.0.0.1:11211"]
    per_alias = revert(moved, current=[REMOTE], local={"INSIGHTS_MEMCACHE": "127.0.0.1:11211"})
    assert per_alias.text == original  # the others fall back to localhost:PORT, which they were
    assert revert(moved, current=[REMOTE]).text == original.replace(
        "'127.0.0.1:11211'", "'localhost:11211'"
    )  # nothing given: localhost as before
    assert_only_endpoint_lines(moved, per_alias.text)


@pytest.mark.parametrize(
    ("before", "spelling"),
    [
        ("[ '::1:11211' ]", "::1:11211"),
        ('["[::1]:11211"]', "[::1]:11211"),
        ("'127.0.0.1:11211'", "127.0.0.1:11211"),
        ("inet:localhost:11211", "inet:localhost:11211"),
        ("localhost", "localhost"),  # python-memcached's default port
        ("127.0.0.1:11211;10.0.0.9:11211", "127.0.0.1:11211"),
        ("[10.0.0.9:11211, 127.0.0.1:11211]", "127.0.0.1:11211"),
        ('"10.0.0.9:11211, 127.0.0.1:11211"', "127.0.0.1:11211"),
    ],
)
def test_unusual_local_spellings_round_trip(before: str, spelling: str) -> None:
    doc = cache_doc(before)
    moved = rewrite(doc, to=[REMOTE, REMOTE2])
    assert moved.replaced_local == {"CACHES.default": spelling}
    assert revert(moved.text, current=[REMOTE, REMOTE2], local=moved.replaced_local).text == doc
    assert revert(moved.text, current=[REMOTE, REMOTE2], local=spelling).text == doc
    if "10.0.0.9" not in doc:  # without `current` every non-local entry goes, the other server too
        assert revert(moved.text, local=spelling).text == doc


def test_revert_spelling_applies_to_an_anchor_shared_by_several_caches_once() -> None:
    doc = (
        "CACHES:\n"
        f"  default: &c {{BACKEND: {MEMCACHED}, LOCATION: &loc [127.0.0.1:11211]}}\n"
        f"  general: {{BACKEND: {MEMCACHED}, LOCATION: *loc}}\n"
    )
    moved = rewrite(doc, to=[REMOTE])
    assert moved.replaced_local == {"CACHES.default": "127.0.0.1:11211", "CACHES.general": "127.0.0.1:11211"}
    assert revert(moved.text, current=[REMOTE], local=moved.replaced_local).text == doc


def test_revert_keeps_its_custom_port_default_next_to_given_spellings() -> None:
    doc = (
        "CACHES:\n"
        f"  default: {{BACKEND: {MEMCACHED}, LOCATION: [localhost:11212]}}\n"
        f"  general: {{BACKEND: {MEMCACHED}, LOCATION: [127.0.0.1:11212]}}\n"
    )
    moved = rewrite(doc, to=[REMOTE], port=11212)
    assert moved.replaced_local == {"CACHES.default": "localhost:11212", "CACHES.general": "127.0.0.1:11212"}
    assert revert(moved.text, port=11212, local={"CACHES.general": "127.0.0.1:11212"}).text == doc


@pytest.mark.parametrize(
    "bad",
    [
        REMOTE,  # not a revert: and a second revert would move it again
        "cache.internal:11211",
        " localhost:11211",
        "localhost:11211;127.0.0.1:11211",
        "localhost:11211, 10.0.0.9:11211",
        "",
        "redis://localhost:6379/1",
    ],
)
def test_revert_refuses_a_spelling_that_is_not_local_memcached(bad: str) -> None:
    moved = rewrite(fixture("insights.yml"), to=[REMOTE]).text
    with pytest.raises(RewriteError, match="not a local memcached entry"):
        revert(moved, local=bad)
    with pytest.raises(RewriteError, match=r"CACHES\.default"):
        revert(moved, local={"CACHES.default": bad})
    with pytest.raises(RewriteError, match="local endpoint"):
        revert(moved, local=["127.0.0.1:11211"])  # type: ignore[arg-type]


def test_revert_without_current_leaves_jinja_references_alone() -> None:
    """`rewrite --revert` with no --from must not turn `"{{ EDXAPP_MEMCACHE }}"` into localhost."""
    original = fixture("server-vars.yml")
    pushed = rewrite(original, to=["10.0.1.6:11211"]).text
    reverted = revert(pushed).text
    assert '"{{ EDXAPP_MEMCACHE }}"' in reverted
    assert reverted.count("localhost:11211") == original.count("localhost:11211") + original.count(
        "127.0.0.1:11211"
    )

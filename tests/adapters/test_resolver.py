"""The address seam: production dials what it is told; the sandbox dials only what its map says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edx_remote_cache.adapters.resolver import (
    ENV_ADDRESS_MAP,
    IdentityResolver,
    InvalidEndpoint,
    MapFileResolver,
    UnmappedAddress,
    parse_endpoint,
    resolver_from_env,
)


def write_map(path: Path, mapping: dict[str, str]) -> None:
    """Rewrite the map the way the sandbox does: write a temp file, then rename over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mapping))
    os.replace(tmp, path)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("10.0.1.5:11211", ("10.0.1.5", 11211)),
        ("cache.internal:22122", ("cache.internal", 22122)),
        ("10.0.1.5", ("10.0.1.5", 11211)),
        ("[::1]:11311", ("::1", 11311)),
        (" 127.0.0.1:40123 ", ("127.0.0.1", 40123)),
    ],
)
def test_identity_resolver_dials_what_it_is_given(endpoint: str, expected: tuple[str, int]) -> None:
    assert IdentityResolver().resolve(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["", ":11211", "host:", "host:http", "host:0", "host:70000", "[::1"])
def test_malformed_endpoints_are_rejected(endpoint: str) -> None:
    with pytest.raises(InvalidEndpoint):
        parse_endpoint(endpoint)


def test_map_file_resolves_mapped_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_map(path, {"10.0.1.5:11211": "127.0.0.1:40123", "10.0.2.7:11211": "127.0.0.1:40124"})
    resolver = MapFileResolver(path)
    assert resolver.resolve("10.0.1.5:11211") == ("127.0.0.1", 40123)
    assert resolver.resolve("10.0.2.7") == ("127.0.0.1", 40124)  # default port normalises to the key


def test_unmapped_endpoint_raises_instead_of_resolving(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_map(path, {"10.0.1.5:11211": "127.0.0.1:40123"})
    resolver = MapFileResolver(path)
    with pytest.raises(UnmappedAddress, match=r"10\.0\.9\.9:11211"):
        resolver.resolve("10.0.9.9:11211")
    with pytest.raises(UnmappedAddress):
        resolver.resolve("10.0.1.5:11212")  # same host, other port: still unmapped


def test_missing_map_file_maps_nothing(tmp_path: Path) -> None:
    resolver = MapFileResolver(tmp_path / "not-there.json")
    with pytest.raises(UnmappedAddress):
        resolver.resolve("10.0.1.5:11211")


def test_map_is_reread_when_the_sandbox_rewrites_it(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_map(path, {"10.0.1.5:11211": "127.0.0.1:40123"})
    resolver = MapFileResolver(path)
    assert resolver.resolve("10.0.1.5:11211") == ("127.0.0.1", 40123)

    # a host was replaced: old endpoint gone, new one on another port
    write_map(path, {"10.0.1.6:11211": "127.0.0.1:40200"})
    assert resolver.resolve("10.0.1.6:11211") == ("127.0.0.1", 40200)
    with pytest.raises(UnmappedAddress):
        resolver.resolve("10.0.1.5:11211")

    # an in-place rewrite (same inode) of a different size is noticed too
    path.write_text(json.dumps({"10.0.1.6:11211": "127.0.0.1:40201", "10.0.1.7:11211": "127.0.0.1:40202"}))
    assert resolver.resolve("10.0.1.6:11211") == ("127.0.0.1", 40201)

    path.unlink()  # sandbox stopped: nothing is mapped any more
    with pytest.raises(UnmappedAddress):
        resolver.resolve("10.0.1.6:11211")


def test_half_written_map_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_map(path, {"10.0.1.5:11211": "127.0.0.1:40123"})
    resolver = MapFileResolver(path)
    assert resolver.resolve("10.0.1.5:11211") == ("127.0.0.1", 40123)
    path.write_text('{"10.0.1.5:11211": "127.0.0.1:4')  # caught mid-write
    assert resolver.resolve("10.0.1.5:11211") == ("127.0.0.1", 40123)
    path.write_text(json.dumps({"10.0.1.5:11211": "127.0.0.1:40999"}))  # writer finished
    assert resolver.resolve("10.0.1.5:11211") == ("127.0.0.1", 40999)


def test_map_never_sends_traffic_to_a_non_loopback_target(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_map(path, {"10.0.1.5:11211": "10.0.1.5:11211", "10.0.1.6:11211": "not a port"})
    resolver = MapFileResolver(path)
    with pytest.raises(UnmappedAddress, match="non-loopback"):
        resolver.resolve("10.0.1.5:11211")
    with pytest.raises(UnmappedAddress):
        resolver.resolve("10.0.1.6:11211")  # a bad entry is simply unmapped


def test_resolver_from_env_uses_the_map_only_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_map(path, {"10.0.1.5:11211": "127.0.0.1:40123"})
    sandbox = resolver_from_env({ENV_ADDRESS_MAP: str(path)})
    assert isinstance(sandbox, MapFileResolver)
    assert sandbox.resolve("10.0.1.5:11211") == ("127.0.0.1", 40123)
    assert isinstance(resolver_from_env({}), IdentityResolver)
    assert isinstance(resolver_from_env({ENV_ADDRESS_MAP: ""}), IdentityResolver)

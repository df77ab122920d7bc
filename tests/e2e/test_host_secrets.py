"""Issue 20: a whole Kubernetes life leaves no byte of a config file outside the host but the cache addresses.

A canary secret is planted at the top of every config file of both sandbox Open edX hosts; then the REAL
operator process at its most talkative drives one object through create, a forced host-drift repair and a
replica change (``-v``, text logs), then, after a restart of the operator (``-v --log-format json``), a drift
repair whose restart fails and is rolled back, a host removed from the spec (reverted) and delete (reverted). The canary, plain, base64 or gzip+base64, must then be in
none of: the SSM commands (the sandbox's agent records every parameter sent and every byte printed,
untruncated, as SSM's invocation history would keep them), any stored version of the object (status), any
Kubernetes Event, the operator's /metrics (scraped at every step), and the operator's log. The hosts' files
must still hold it (and be their exact original bytes after the revert): the canary did reach the files.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import re
import time
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from edx_remote_cache.sandbox import Sandbox

from .conftest import Operators
from .support import MANAGED_FILES, Cache, host_file, original, reset_hosts, wait_until

pytestmark = pytest.mark.e2e

NS = "e2e-secrets"
DRIFT = 5  # the CRD's minimum driftIntervalSeconds
CANARY = "erc-canary-7f3a9c1e5b2d4f60"
SECRETS = f"SECRET_KEY: '{CANARY}'\nAWS_SECRET_ACCESS_KEY: {CANARY}-aws\n".encode()
_B64 = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


def _decodings(text: str) -> Iterator[bytes]:
    """``text`` itself, and every base64 token in it decoded, and gunzipped when it is a gzip stream."""
    yield text.encode("utf-8", "replace")
    for token in _B64.findall(text):
        for candidate in (token, token + "=" * (-len(token) % 4)):
            try:
                raw = base64.b64decode(candidate, altchars=b"-_" if "-" in token or "_" in token else None)
            except (binascii.Error, ValueError):
                continue
            yield raw
            with contextlib.suppress(OSError, EOFError, zlib.error):
                yield gzip.decompress(raw)


def leaks(texts: Iterable[str]) -> list[str]:
    """The texts that carry the canary in any encoding (the first 200 characters of each, for the message)."""
    return [t[:200] for t in texts if any(CANARY.encode() in d for d in _decodings(t))]


def test_the_leak_finder_finds_the_canary_in_every_encoding() -> None:  # the control: a finder that can fail
    assert leaks([SECRETS.decode()])
    assert leaks([f"ERC-NODE 0 {base64.b64encode(SECRETS).decode()}"])
    assert leaks([f"ERC-DATA 0 {base64.b64encode(gzip.compress(b'x' * 100 + SECRETS)).decode()}"])
    assert leaks([f'{{"message": "{base64.urlsafe_b64encode(b"..." + SECRETS).decode()}"}}'])
    assert not leaks(["ERC-BEGIN 1", base64.b64encode(b"localhost:11211").decode()])


def _plant(sb: Sandbox) -> None:
    for host in sb.edx_hosts:
        for rel, name in MANAGED_FILES.values():
            host_file(sb, host, rel).write_bytes(SECRETS + original(name))


def _localhost_back(path: Path, endpoints: Iterable[str]) -> None:
    """What an ansible run does: LOCATION back on localhost (the canary stays at the top)."""
    data = path.read_bytes()
    for endpoint in endpoints:
        data = data.replace(endpoint.encode(), b"localhost:11211")
    path.write_bytes(data)


def _ssm_records(sb: Sandbox) -> list[str]:
    assert sb.ssm is not None
    out: list[str] = []
    for inv in sb.ssm.invocations():
        out += [
            inv["FullStdout"],
            inv["FullStderr"],
            inv["StandardOutputContent"],
            inv["Comment"],
            inv["Script"],
        ]
        out += [word for words in inv["Parameters"].values() for word in words]
    out += [repr(call.params) for call in sb.calls.calls("SendCommand")]
    return out


@pytest.mark.timeout(150)
def test_a_whole_kubernetes_life_leaks_no_byte_of_the_config_files(
    sandbox: Sandbox, operators: Operators
) -> None:
    sb = sandbox
    h1, h2 = sb.edx_hosts
    lms = {h: host_file(sb, h, MANAGED_FILES["/edx/etc/lms.yml"][0]) for h in (h1, h2)}
    metrics: list[str] = []
    _plant(sb)
    args = ("--all-namespaces", "--standalone", "-v")
    operator = operators.start("secrets-text", args=args)
    logs: list[str] = []
    started = time.monotonic()

    def scrape() -> None:
        with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
            metrics.append(response.read().decode())

    try:
        # create
        cache = Cache.create(sb, "secrets", NS, driftIntervalSeconds=DRIFT)
        [a] = cache.wait_ready(timeout=30)["status"]["endpoints"]
        assert all(a.encode() in lms[h].read_bytes() for h in (h1, h2))
        scrape()

        # a forced host-drift repair
        _localhost_back(lms[h1], [a])
        wait_until(lambda: a.encode() in lms[h1].read_bytes(), timeout=DRIFT + 8, what="the drift repair")
        wait_until(lambda: "HostDrift" in cache.event_reasons(), timeout=5, what="HostDrift")

        # a replica change
        generation = cache.patch_spec({"instance": {"replicas": 2}})
        endpoints = cache.wait_ready(timeout=40, generation=generation)["status"]["endpoints"]
        assert len(endpoints) == 2 and all(e.encode() in lms[h2].read_bytes() for e in endpoints)
        scrape()
        operator.stop(timeout=10)
        logs.append(operator.log())
        operator = operators.start("secrets-json", args=(*args, "--log-format", "json"))

        # a drift repair whose restart fails: rolled back to the drifted bytes, then retried by a spec change
        sb.faults.fail_restarts(h2)
        _localhost_back(lms[h2], endpoints)
        drifted = lms[h2].read_bytes()
        cache.wait(
            lambda o: cache.host_states().get(h2) == "RolledBack", timeout=DRIFT + 10, what="RolledBack"
        )
        assert lms[h2].read_bytes() == drifted
        sb.faults.fail_restarts(h2, False)
        scrape()
        generation = cache.patch_spec({"probe": {"timeoutSeconds": 0.6}})
        cache.wait_ready(timeout=30, generation=generation)

        # a host removed from the spec is reverted, then delete reverts the other: original bytes again
        generation = cache.patch_spec({"openedx": {"hosts": [h1]}})
        cache.wait(lambda o: list(cache.host_states()) == [h1], timeout=30, what="h2 released")
        cache.wait_ready(timeout=20, generation=generation)
        scrape()
        cache.delete_and_wait(timeout=45)
        for host in (h1, h2):
            for rel, name in MANAGED_FILES.values():
                assert host_file(sb, host, rel).read_bytes() == SECRETS + original(name), (host, rel)
        took = time.monotonic() - started
    finally:
        sb.faults.fail_restarts(h2, False)
        operator.stop(timeout=10)  # a second standalone operator would race this one (module fixture)
        reset_hosts(sb)
    logs.append(operator.log())
    print(f"lifecycle took {took:.1f}s")

    recorded = _ssm_records(sb)
    assert sum("ERC-NODE" in t for t in recorded) >= 10  # we did look at the reads' outputs
    assert leaks(recorded) == []
    versions = [repr(v) for v in sb.kube.iter_history(NS, "secrets")]
    assert len(versions) > 5 and leaks(versions) == []
    events = [repr(e) for e in sb.kube.list_events(NS)]
    reasons = " ".join(events)
    for reason in ("HostDrift", "HostRolledBack", "HostReleased", "HostReverted"):
        assert reason in reasons, reason
    assert leaks(events) == []
    assert len(metrics) == 4 and leaks(metrics) == []
    text, json_lines = logs
    assert " DEBUG " in text and '"severity": "debug"' in json_lines  # the most verbose level was on
    assert "lastPushTime" in text and "lastPushTime" in json_lines  # ... and it logged the hosts' results
    assert leaks(text.splitlines()) == [] and leaks(json_lines.splitlines()) == []

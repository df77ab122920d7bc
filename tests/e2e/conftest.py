"""Fixtures of the end-to-end suite: the sandbox cloud and the real operator process, shared per module.

* ``sandbox``: one :class:`Sandbox` per test module (tests use their own object names / namespaces). On teardown
  it checks that the emulated API had no internal error and that no memcached it started survives, and hands the
  operator's AWS calls to the session recorder.
* ``operators``: starts ``edx-remote-cache run`` children (module scope) with the loopback guard
  (tests/e2e/netguard/sitecustomize.py) on their PYTHONPATH; stops them all at the end and fails the module if a
  guarded process tried to reach anything but 127.0.0.1, or ran without the guard.
* ``operator``: one operator (standalone) per module, for the tests that need just one.

With ``EDX_REMOTE_CACHE_RECORD_CALLS=1`` the session writes every AWS operation the operator called into
tests/fixtures/aws_calls.json (checked by tests/test_iam_policy.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from edx_remote_cache.sandbox import Sandbox
from edx_remote_cache.sandbox.cache_hosts import OWNER_ENV
from edx_remote_cache.sandbox.harness import OperatorProcess

from .support import root_netns_cookie

ROOT = Path(__file__).resolve().parents[2]
GUARD_DIR = Path(__file__).resolve().parent / "netguard"
GUARD_LOG_ENV = "EDX_REMOTE_CACHE_NET_GUARD_LOG"
RECORD_CALLS_ENV = "EDX_REMOTE_CACHE_RECORD_CALLS"
AWS_CALLS_FILE = ROOT / "tests" / "fixtures" / "aws_calls.json"


def _our_memcached() -> list[int]:
    """memcached processes a sandbox of this test process started and that still run."""
    marker = f"{OWNER_ENV}={os.getpid()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session")
def aws_operations() -> Iterator[set[tuple[str, str]]]:
    """(service, operation) of every AWS call an operator made in this session."""
    seen: set[tuple[str, str]] = set()
    yield seen
    if os.environ.get(RECORD_CALLS_ENV) == "1" and seen:
        calls = [{"service": s, "operation": o} for s, o in sorted(seen)]
        AWS_CALLS_FILE.write_text(json.dumps(calls, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def sandbox(
    tmp_path_factory: pytest.TempPathFactory, aws_operations: set[tuple[str, str]]
) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"), ssm_invocation_delay=0.05)
    sb.start()
    try:
        yield sb
    finally:
        errors: list[str] = []
        if sb.aws is not None:
            aws_operations.update((c.service, c.operation) for c in sb.calls.calls())
        if sb.kube is not None:
            errors = sb.kube.errors
        sb.stop()
        leftovers = _our_memcached()
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"memcached processes left running after the sandbox stopped: {leftovers}"
        assert not errors, f"the emulated Kubernetes API failed internally: {errors}"


class Operators:
    """Starts guarded operator processes against one sandbox; ``close()`` stops them and checks the guard."""

    def __init__(self, sb: Sandbox, directory: Path) -> None:
        self.sb = sb
        self.dir = directory
        self.started: list[tuple[OperatorProcess, Path]] = []

    def start(self, name: str = "operator", *, args: Sequence[str] | None = None) -> OperatorProcess:
        guard_log = self.dir / f"{name}-{len(self.started)}.netguard.jsonl"
        env = {
            **self.sb.env(),
            "PYTHONPATH": os.pathsep.join(p for p in (str(GUARD_DIR), os.environ.get("PYTHONPATH")) if p),
            GUARD_LOG_ENV: str(guard_log),
            "EDX_REMOTE_CACHE_NET_GUARD_ROOT_COOKIE": str(root_netns_cookie()),
        }
        process = OperatorProcess(
            env,
            log_path=self.dir / f"{name}-{len(self.started)}.log",
            args=tuple(args) if args is not None else ("--all-namespaces", "--standalone"),
        )
        self.started.append((process, guard_log))
        process.start()
        return process

    def violations(self) -> list[str]:
        lines: list[str] = []
        for _process, guard_log in self.started:
            if guard_log.exists():
                lines += [x for x in guard_log.read_text(encoding="utf-8").splitlines() if x.strip()]
        return lines

    def close(self) -> None:
        for process, _ in self.started:
            process.stop(timeout=10)
        unguarded = [
            str(process.log_path)
            for process, guard_log in self.started
            if not Path(f"{guard_log}.loaded").exists()
        ]
        violations = self.violations()
        assert not unguarded, f"operator processes ran without the loopback guard: {unguarded}"
        assert not violations, "an operator process tried to leave loopback:\n" + "\n".join(violations)


@pytest.fixture(scope="module")
def operators(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    ops = Operators(sandbox, tmp_path_factory.mktemp("operators"))
    try:
        yield ops
    finally:
        ops.close()


@pytest.fixture(autouse=True)
def operators_started_by_a_test_stop_with_it(request: pytest.FixtureRequest) -> Iterator[None]:
    """`operators` is module-wide; an operator a test starts itself stops when that test ends, pass or fail (two
    standalone operators on one object race each other's pushes, and a failed test must not leave one behind to
    break the next test of the module). The module's shared `operator` is started before this and stays."""
    if "operators" not in request.fixturenames:
        yield
        return
    ops: Operators = request.getfixturevalue("operators")
    before = len(ops.started)
    yield
    for process, _ in ops.started[before:]:
        process.stop(timeout=10)


@pytest.fixture(scope="module")
def operator(operators: Operators) -> OperatorProcess:
    return operators.start()


def _objects(sb: Sandbox) -> set[tuple[str, str]]:
    return {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in sb.kube.list_objects()}


@pytest.fixture(autouse=True)
def _leave_the_sandbox_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails half-way must not break the next one: afterwards, undo its faults and delete the
    EdxRemoteCaches it created (the operator reverts the hosts and removes what it launched)."""
    if "sandbox" not in request.fixturenames:
        yield
        return
    sb: Sandbox = request.getfixturevalue("sandbox")
    before = _objects(sb)
    yield
    if sb.kube is None or sb.faults is None:
        return
    sb.faults.hide_new_instances(0)
    for host in sb.edx_hosts:
        sb.faults.agent_online(host)
        sb.faults.fail_restarts(host, False)
    left = _objects(sb) - before
    for namespace, name in left:
        sb.kube.delete(namespace, name, missing_ok=True)
    deadline = time.monotonic() + 45
    while left and time.monotonic() < deadline:
        left &= _objects(sb)
        time.sleep(0.2)
    for namespace, name in left:  # no operator to finish the deletion: let the object go
        with contextlib.suppress(Exception):
            sb.kube.patch(namespace, name, {"metadata": {"finalizers": None}})

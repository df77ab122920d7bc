"""Boot failures are diagnosed, not looped: the step the healing ladder asks first about a failing cache host.

A host whose memcached has not answered since its instance started is not a cache that died: restarting or
replacing it from the same spec fails the same way (measured before this step: 13 instances in 2.5 minutes at a
limit of 10, and the Open edX hosts pointed at each dead one in turn). For such a host:

* its boot is read, at most every LOOK_AGAIN_SECONDS: EC2's console output (no agent needed) and, when its SSM
  agent is online, `journalctl -u memcached` and the tail of cloud-init's log (domain/boot.py, bounded);
* as soon as the logs are conclusive (memcached's own error, or the boot ended on an apt failure, a failed unit,
  ...), or when BOOT_GRACE_SECONDS passed without, it is a boot failure: CacheHealthy=False reason `BootFailed` with the last meaningful lines,
  a Warning event once per instance, `edx_remote_cache_boot_failures_total`;
* one replacement per spec generation (`status.boot`, kept across operator restarts); when that one fails to
  boot too, Stalled with reason `BootFailed` until the spec changes (a new generation gets a fresh attempt) or
  the cache answers (the ladder's all-clear lifts it);
* the Open edX hosts are never pointed at an instance that has not answered (`unanswered`, used by the pass).

Which instances answered since they started is `ResourceState.answered_at` (reconciler/state.py), the record
the host pass and the cloud plan read too; this module writes it to `status.boot.answered`, so an operator
restart does not take a long-running cache for a fresh boot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from edx_remote_cache.adapters.aws import AwsError
from edx_remote_cache.adapters.probe import ProbeResult
from edx_remote_cache.adapters.ssm import COMMENT_BOOT_DIAGNOSIS, SsmError
from edx_remote_cache.domain.boot import (
    BootDiagnosis,
    BootLedger,
    diagnose,
    render_boot_log_script,
    split_boot_log,
)
from edx_remote_cache.domain.conditions import Facts
from edx_remote_cache.domain.spec import EdxRemoteCacheSpec
from edx_remote_cache.reconciler.state import Adapters, ObjectRef, ResourceState
from edx_remote_cache.reconciler.status import StatusPublisher

log = logging.getLogger(__name__)

# A host silent in its logs and still not answering after this long failed to boot all the same (an Ubuntu
# cache host answers ~1-3 minutes after launch; an AWS Auto Scaling group's default health check grace is 300 s).
BOOT_GRACE_SECONDS = 600.0
LOOK_AGAIN_SECONDS = 20.0  # one console read (and one SSM command) per silent instance at most this often
BOOT_LOG_COMMAND_TIMEOUT = 30
REPLACEMENTS_PER_GENERATION = 1

# replace(obj, state, spec, instance_id, endpoint) -> the action taken (the ladder's rate-limited rung 3)
Replace = Callable[[Mapping[str, Any], ResourceState, EdxRemoteCacheSpec, str, str], Awaitable[str]]


@dataclasses.dataclass
class _Memory:
    """One object's boot diagnosis: when each silent instance was first seen, what its logs said."""

    silent_since: dict[str, float] = dataclasses.field(default_factory=dict)
    looked: dict[str, tuple[float, BootDiagnosis]] = dataclasses.field(default_factory=dict)
    warned: set[str] = dataclasses.field(default_factory=set)  # instances whose BootFailed event was sent


class BootWatch:
    """Tells a boot failure from a failure of a cache that once served, and handles the former."""

    def __init__(self, adapters: Adapters, status: StatusPublisher, replace: Replace) -> None:
        self.adapters = adapters
        self.status = status
        self._replace = replace
        self._objects: dict[str, _Memory] = {}

    def forget(self, uid: str) -> None:
        self._objects.pop(uid, None)

    def _memory(self, obj: Mapping[str, Any]) -> _Memory:
        return self._objects.setdefault(ObjectRef.of(obj).uid, _Memory())

    # ------------------------------------------------------------------------------------------ answers

    def note_answers(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        results: Sequence[ProbeResult],
        instances: Iterable[tuple[str, str, str]],
        port: int,
    ) -> tuple[str, ...]:
        """After a probe round ((id, private ip, state) of each instance): forget instances not running, end the
        diagnosis of those that answer now; returns the endpoints whose instance has not answered since it
        started (the hosts are not pointed at those). The answers themselves are credited where the probes
        and the second opinions are made (`state.answered_at`)."""
        memory = self._memory(obj)
        running = {f"{ip}:{port}": iid for iid, ip, ec2_state in instances if ec2_state == "running" and ip}
        state.forget_not_running(set(running.values()))
        answered_now = {running[r.endpoint] for r in results if r.healthy and r.endpoint in running}
        if answered_now & set(memory.looked) or (state.boot_failure and answered_now):
            for iid in answered_now:
                memory.looked.pop(iid, None)
                memory.silent_since.pop(iid, None)
            state.boot_failure = None
        return tuple(e for e, iid in running.items() if iid not in state.answered_at)

    def boot_status(self, state: ResourceState) -> dict[str, Any]:
        """`status.boot`: the instances that answered since they started, and the replacement ledger."""
        return _boot_status(state, BootLedger.of({"boot": state.status.get("boot")}))

    # ------------------------------------------------------------------------------------------ diagnosis

    async def check(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        inst: Mapping[str, Any],
        result: ProbeResult,
    ) -> str | None:
        """None: the instance answered since it started (the ladder handles it) or is not running (EC2's
        rung handles it). Otherwise what was done: "" (still booting), "ReplaceInstance", "RateLimited",
        "BootFailed" (stalled: its one replacement per generation is spent)."""
        instance_id = str(inst.get("id"))
        memory = self._memory(obj)
        if inst.get("state") != "running" or instance_id in state.answered_at:
            return None
        now = self.adapters.clock()
        since = memory.silent_since.setdefault(instance_id, now)
        looked = memory.looked.get(instance_id)
        if looked is not None and now - looked[0] < LOOK_AGAIN_SECONDS:
            found = looked[1]
        else:
            found = await self._diagnose(spec, instance_id)
            memory.looked[instance_id] = (now, found)
        if not found.conclusive and now - since < BOOT_GRACE_SECONDS:
            return ""  # still booting, as far as anything tells
        return await self._failed(obj, state, spec, instance_id, result.endpoint, found, now - since)

    async def _diagnose(self, spec: EdxRemoteCacheSpec, instance_id: str) -> BootDiagnosis:
        """Console output (EC2) and, with an online agent, memcached's journal and cloud-init's log (SSM)."""
        console: str | None = None
        try:
            clients = self.adapters.clients(spec.region)
            console = await asyncio.to_thread(self.adapters.console_output, clients, instance_id)
        except AwsError as exc:
            log.warning("console output of %s not read: %s", instance_id, exc)
        journal = cloud_init = None
        unavailable = ""
        ssm = self.adapters.ssm(spec.region)
        try:
            ping = (await asyncio.to_thread(ssm.ping_statuses, [instance_id])).get(
                instance_id, "NotRegistered"
            )
            if ping == "Online":
                done = await asyncio.to_thread(
                    ssm.run_script, instance_id, render_boot_log_script(), timeout=BOOT_LOG_COMMAND_TIMEOUT,
                    comment=COMMENT_BOOT_DIAGNOSIS,
                )  # fmt: skip
                if done.status == "Success":
                    journal, cloud_init = split_boot_log(done.stdout)
                else:
                    unavailable = f"the SSM command ended {done.status}"
            else:
                unavailable = f"its SSM agent is {ping}"
        except SsmError as exc:
            unavailable = f"SSM: {exc}"
        return diagnose(
            instance_id, console=console, journal=journal, cloud_init=cloud_init, ssm_unavailable=unavailable
        )

    async def _failed(
        self,
        obj: Mapping[str, Any],
        state: ResourceState,
        spec: EdxRemoteCacheSpec,
        instance_id: str,
        endpoint: str,
        found: BootDiagnosis,
        waited: float,
    ) -> str:
        """A boot failure: report it, then replace once per generation, or stall."""
        ref = ObjectRef.of(obj)
        memory = self._memory(obj)
        ledger = BootLedger.of({"boot": state.status.get("boot")})
        message = found.message(endpoint, waited)
        may_replace = ledger.may_replace(ref.generation, allowed=REPLACEMENTS_PER_GENERATION)
        if instance_id not in memory.warned:
            memory.warned.add(instance_id)
            self.adapters.metrics.boot_failures.labels(ref.namespace, ref.name).inc()
            then = (
                "replacing it once for this spec generation"
                if may_replace
                else "not replaced again: the spec generation's one replacement failed the same way"
            )
            self.adapters.events(obj, "Warning", "BootFailed", f"{message}; {then}")
        if may_replace:
            ledger = ledger.after_replacing(instance_id, ref.generation)
            state.boot_failure = (
                f"{message}; replaced once (a new instance from the same spec may fail the same way)"
            )
            await self._publish(obj, state, spec, ledger)
            return await self._replace(obj, state, spec, instance_id, endpoint)
        state.boot_failure = message
        state.heal_stall = (
            f"BootFailed: {message}. The one replacement for spec generation {ledger.generation} "
            f"({', '.join(ledger.replaced)}) failed the same way; fix the cause, then change the spec (a new "
            "generation gets a fresh attempt)"
        )
        state.heal_stall_generation = ref.generation
        await self._publish(obj, state, spec, ledger)
        return "BootFailed"

    async def _publish(
        self, obj: Mapping[str, Any], state: ResourceState, spec: EdxRemoteCacheSpec, ledger: BootLedger
    ) -> None:
        """The ledger goes to status before anything is replaced: a restart in between never replaces twice."""
        boot = _boot_status(state, ledger)
        base = state.facts or Facts(ObjectRef.of(obj).generation)
        facts = dataclasses.replace(
            base,
            terminal_error=state.standing_stall(base.terminal_error),
            **self.status.probe_facts(state, spec),
        )
        state.status["boot"] = boot
        await self.status.publish(obj, state, facts, boot=boot)


def _boot_status(state: ResourceState, ledger: BootLedger) -> dict[str, Any]:
    return {"answered": sorted(state.answered_at), **(ledger.to_status() or {})}

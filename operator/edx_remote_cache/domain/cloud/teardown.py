"""The teardown plan: what deleting an EdxRemoteCache removes, per deletionPolicy."""

from __future__ import annotations

from edx_remote_cache import OWNER_TAG, OWNER_UID_TAG
from edx_remote_cache.domain.cloud.actions import (
    Action,
    DeleteSecurityGroup,
    DetachSecurityGroup,
    Plan,
    TerminateInstance,
    UntagResources,
    WaitFor,
)
from edx_remote_cache.domain.cloud.diff import _extra_order
from edx_remote_cache.domain.cloud.model import (
    ADOPTED_TAG,
    CONFIG_HASH_TAG,
    INDEX_TAG,
    DeletionPolicy,
    ObservedCloud,
    Owner,
)

# --- teardown ------------------------------------------------------------------------------------------------


def teardown_plan(*, observed: ObservedCloud, owner: Owner, policy: DeletionPolicy) -> Plan:
    """What deleting the CR does to AWS; an empty plan means finished.

    Delete: terminate launched instances, wait until they are gone, then delete the group (DependencyViolation
    is retryable while interfaces detach). Adopted hosts are released, never destroyed: our group comes off
    and our tags go. Retain: only the ownership tags go; AWS is otherwise untouched.
    """
    ours = observed.owned_instances(owner)
    groups = observed.owned_groups(owner)
    ownership = (OWNER_TAG, OWNER_UID_TAG)
    if policy == "Retain":
        ids = tuple(i.instance_id for i in ours) + tuple(v for i in ours for v in i.volume_ids)
        ids += tuple(g.group_id for g in groups)
        return Plan((UntagResources(ids, ownership),) if ids else ())
    actions: list[Action] = []
    group_ids = {g.group_id for g in groups}
    launched = [i for i in ours if not i.adopted]
    for inst in ours:
        if inst.adopted:
            if group_ids & set(inst.security_group_ids):
                keep = tuple(g for g in inst.security_group_ids if g not in group_ids)
                actions.append(DetachSecurityGroup(inst.instance_id, inst.network_interface_id, keep))
            actions.append(
                UntagResources((inst.instance_id,), (*ownership, INDEX_TAG, ADOPTED_TAG, CONFIG_HASH_TAG))
            )
    for inst in sorted(launched, key=_extra_order):
        actions.append(TerminateInstance(inst.instance_id, "EdxRemoteCache deleted"))
    pending = tuple(i.instance_id for i in launched) + observed.departing
    if pending:
        actions.append(WaitFor(pending, "gone", "instances must be gone before the security group can go"))
    else:
        actions.extend(DeleteSecurityGroup(g) for g in sorted(group_ids))
    return Plan(tuple(actions))

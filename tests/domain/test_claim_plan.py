"""One host, one owner (domain/claims.py): the oldest claimant owns a host whatever order the claims arrive in;
an owner waits while another object still holds the host; what an object holds and no longer owns is released."""

from __future__ import annotations

import itertools

from edx_remote_cache.domain.claims import Claim, claims_of, held_hosts, plan_claims

OLD = Claim("2025-01-01T00:00:00Z", "prod", "site", "uid-old")
NEW = Claim("2025-02-01T00:00:00Z", "prod", "copy", "uid-new")
SAME_SECOND = Claim("2025-01-01T00:00:00Z", "prod", "alpha", "uid-alpha")


def test_the_oldest_claimant_owns_the_host_whatever_the_order_claims_arrive_in() -> None:
    for rivals in itertools.permutations([OLD, NEW, SAME_SECOND]):
        plan = plan_claims(me=NEW, wanted=["i-1"], held=[], others={"i-1": list(rivals)})
        assert plan.claimed == {"i-1": SAME_SECOND}, "same second: namespace/name decides"
        assert plan.mine == ()
    plan = plan_claims(me=SAME_SECOND, wanted=["i-1"], held=[], others={"i-1": [OLD, NEW]})
    assert plan.mine == ("i-1",)


def test_an_owner_waits_until_the_object_holding_the_host_has_reverted_it() -> None:
    holder = Claim(NEW.created, NEW.namespace, NEW.name, NEW.uid, held=True)
    plan = plan_claims(me=OLD, wanted=["i-1", "i-2"], held=[], others={"i-1": [holder]})
    assert plan.waiting == {"i-1": holder} and plan.mine == ("i-2",)
    # and the younger holder lets go: it reverts the host it holds but no longer owns
    plan = plan_claims(me=NEW, wanted=["i-1"], held=["i-1"], others={"i-1": [OLD]})
    assert plan.release == ("i-1",) and plan.claimed == {"i-1": OLD}
    assert plan.reason("i-1", ["i-1"]) == "prod/site (created earlier) manages it"


def test_a_held_host_no_longer_wanted_is_released_and_the_index_ignores_this_objects_own_stale_claim() -> (
    None
):
    me_in_index = Claim(OLD.created, OLD.namespace, OLD.name, OLD.uid, held=True)
    plan = plan_claims(me=OLD, wanted=["i-2"], held=["i-1", "i-2"], others={"i-2": [me_in_index]})
    assert plan.mine == ("i-2",) and plan.release == ("i-1",)
    assert plan.reason("i-1", ["i-2"]).startswith("no longer in spec.openedx.hosts")


def test_the_index_entry_names_listed_resolved_and_held_hosts_and_a_deleted_object_only_what_it_holds() -> (
    None
):
    obj = {
        "metadata": {"name": "site", "namespace": "prod", "uid": "u", "creationTimestamp": OLD.created},
        "spec": {"openedx": {"hosts": ["i-1"]}},
        "status": {
            "hosts": [
                {"instanceId": "i-1", "state": "Configured"},
                {"instanceId": "i-2", "state": "Claimed"},  # matched by the selector, managed by another
                {"instanceId": "i-3", "state": "Pending"},
                {"instanceId": "i-4", "state": "RolledBack"},
            ]
        },
    }
    claims = claims_of(obj)
    assert sorted(claims) == ["i-1", "i-2", "i-3", "i-4"]
    assert (
        [h for h, c in sorted(claims.items()) if c.held]
        == ["i-1", "i-4"]
        == sorted(held_hosts(obj["status"]))
    )
    obj["metadata"]["deletionTimestamp"] = "2025-03-01T00:00:00Z"
    assert sorted(claims_of(obj)) == ["i-1", "i-4"]
    obj["status"]["hostsReverted"] = True
    assert claims_of(obj) == {}


def test_an_object_whose_age_is_unknown_never_takes_a_host_from_one_whose_age_is_known() -> None:
    unknown = Claim.of({"metadata": {"name": "aaa", "namespace": "prod", "uid": "u"}})
    plan = plan_claims(me=unknown, wanted=["i-1"], held=[], others={"i-1": [NEW]})
    assert plan.claimed == {"i-1": NEW}


def test_objects_managing_disjoint_files_of_one_host_are_no_rivals_and_default_files_are_shared() -> None:
    def obj(name: str, created: str, **openedx: object) -> dict:
        return {
            "metadata": {"name": name, "namespace": "prod", "uid": name, "creationTimestamp": created},
            "spec": {"region": "us-east-1", "instance": {"subnetId": "subnet-0123456789abcdef0"},
                     "openedx": {"hosts": ["i-0123456789abcdef0"], **openedx}},
        }  # fmt: skip

    one = Claim.of(obj("one", OLD.created, configFiles=["/edx/etc/a.yml"], ansibleVarsFiles=[]))
    two = Claim.of(obj("two", NEW.created, configFiles=["/edx/etc/b.yml"], ansibleVarsFiles=[]))
    assert plan_claims(me=two, wanted=["i-1"], held=[], others={"i-1": [one]}).mine == ("i-1",)
    site, copy = Claim.of(obj("site", OLD.created)), Claim.of(obj("copy", NEW.created))
    assert site.files and site.files == copy.files
    assert plan_claims(me=copy, wanted=["i-1"], held=[], others={"i-1": [site]}).claimed == {"i-1": site}
    assert Claim.of({"metadata": {"name": "bad"}, "spec": {"region": 7}}).overlaps(one), (
        "unknown files: a rival"
    )

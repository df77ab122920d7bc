"""``edx-remote-cache demo`` (``make demo``): the operator's whole loop in the sandbox VPC, narrated, in well under a
minute.

The story, one step at a time, each with a timeout so the demo can never hang:

 1. sandbox     start the sandbox cloud: a Kubernetes API (CRD installed), AWS (EC2 + SSM, moto), two Open edX
                app servers (their ``/edx`` is a directory here); the APIs on 127.0.0.1, every instance in a
                network namespace of the sandbox VPC at its private IP
 2. operator    start the real operator, ``edx-remote-cache run``, as a child process in its own namespace
 3. apply       apply ``examples/sandbox-demo.yaml`` (subnet and host ids templated in) and wait for Ready
 4. config      show what the operator pushed to ``/edx/etc/lms.yml``: a diff of LOCATION lines only
 5. traffic     "the LMS" on an Open edX host (Django's cache framework from its lms.yml, in its namespace):
                read-through get/set on the LOCATION it now has, through the cache's security group, until
                the operator's probe reports a real hit ratio
 6. detect      SIGKILL the cache host's memcached; wait for ``CacheHealthy=False``
 7. heal        wait for the operator to heal it (memcached restarted through SSM) and be Ready again
 8. delete      delete the object: hosts reverted (lms.yml byte for byte), instance terminated, group deleted
 9. cleanup     stop the operator and the sandbox, and check nothing is left running (also after Ctrl-C)

``--headless --report FILE`` runs the same story without the live table and writes::

    {"ok": bool, "ready_seconds": float, "detect_seconds": float, "heal_seconds": float,
     "total_seconds": float, "interrupted": bool,
     "steps": [{"name": str, "ok": bool, "seconds": float, "detail": str}]}

``ready_seconds`` is apply -> Ready, ``detect_seconds`` kill -> CacheHealthy False, ``heal_seconds`` kill ->
Ready again (the whole outage). A figure that was never measured is null. The exit status is 0 only when every
step passed (130 after Ctrl-C).

Nothing here dials anything but 127.0.0.1 from this machine's namespace; the cache traffic runs inside the
sandbox VPC, which has no route out.
"""

from edx_remote_cache.sandbox.demo.command import add_parser, run
from edx_remote_cache.sandbox.demo.config import (
    EXAMPLE,
    compare_reverted,
    demo_manifest,
    location_diff,
    original_config,
    yaml_key_path,
)
from edx_remote_cache.sandbox.demo.display import (
    COLUMNS,
    Display,
    render_table,
    table_row,
    visible_len,
    wrap_visible,
)

__all__ = [
    "COLUMNS",
    "EXAMPLE",
    "Display",
    "add_parser",
    "compare_reverted",
    "demo_manifest",
    "location_diff",
    "original_config",
    "render_table",
    "run",
    "table_row",
    "visible_len",
    "wrap_visible",
    "yaml_key_path",
]

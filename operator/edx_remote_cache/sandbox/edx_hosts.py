"""Open edX app hosts for the sandbox: EC2 instances tagged like a native install, each with a root that the
host's SSM scripts see as ``/edx``.

The root holds the real config files of a native (Koa/Lilac) install, copied from the package data
``edx_remote_cache/data/edx/``, and a ``bin/supervisorctl`` that records every call (time, exit code, arguments)
in ``<root>/supervisorctl.log`` and fails while ``<root>/supervisorctl.fail`` exists (its content, if a number,
is the exit code).
"""

from __future__ import annotations

import importlib.resources
import shlex
from dataclasses import dataclass
from pathlib import Path

from edx_remote_cache.sandbox.ssm_agent import SandboxHost

__all__ = [
    "CONFIG_FILES",
    "EDX_ROLE_TAG",
    "SupervisorctlCall",
    "build_root",
    "set_supervisorctl_failing",
    "supervisorctl_calls",
]

EDX_ROLE_TAG = "openedx-role"
# path under the root (= under /edx on the host) -> file in the package data
CONFIG_FILES = {
    "etc/lms.yml": "lms.yml",
    "etc/studio.yml": "studio.yml",
    "etc/ecommerce.yml": "ecommerce.yml",
    "etc/insights.yml": "insights.yml",
    "app/edx_ansible/server-vars.yml": "server-vars.yml",
}
SUPERVISORCTL_LOG = "supervisorctl.log"
SUPERVISORCTL_FAIL = "supervisorctl.fail"

_SUPERVISORCTL = r"""#!/bin/bash
# Sandbox stand-in for /edx/bin/supervisorctl: records each call; fails while supervisorctl.fail exists.
root=$(cd "$(dirname "$0")/.." && pwd)
rc=0
if [ -e "$root/supervisorctl.fail" ]; then
  rc=$(cat "$root/supervisorctl.fail" 2>/dev/null); case "$rc" in ''|*[!0-9]*) rc=1 ;; esac
fi
printf '%s\t%s\t%s\n' "$(date +%s.%N)" "$rc" "$(printf '%q ' "$@")" >> "$root/supervisorctl.log"
verb=$1; shift
case "$verb" in
  restart|start|stop)
    for program in "$@"; do
      if [ "$rc" != 0 ]; then echo "$program: ERROR (spawn error)"; continue; fi
      case "$verb" in
        restart) echo "$program: stopped"; echo "$program: started" ;;
        start) echo "$program: started" ;;
        stop) echo "$program: stopped" ;;
      esac
    done ;;
  status)
    for program in ${@:-lms cms ecommerce insights edxapp_worker:lms_default_1 edxapp_worker:cms_default_1}; do
      if [ "$rc" != 0 ]; then echo "$program                 FATAL     Exited too quickly"
      else echo "$program                 RUNNING   pid 4242, uptime 1 day, 2:03:04"; fi
    done ;;
  reread|update|avail|pid|version) ;;
  *) echo "*** Unknown syntax: $verb" ; rc=${rc/#0/1} ;;
esac
exit "$rc"
"""


def _data_file(name: str) -> bytes:
    resource = importlib.resources.files("edx_remote_cache").joinpath("data", "edx", name)
    try:
        return resource.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"package data edx_remote_cache/data/edx/{name} is missing: reinstall the package (pip install -e .)"
        ) from exc


def build_root(host: SandboxHost) -> None:
    """Lay out the host's /edx: config files, and a recording supervisorctl."""
    host.create_dirs()
    for target, name in CONFIG_FILES.items():
        path = host.root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_data_file(name))
    supervisorctl = host.root / "bin" / "supervisorctl"
    supervisorctl.parent.mkdir(parents=True, exist_ok=True)
    supervisorctl.write_text(_SUPERVISORCTL, encoding="utf-8")
    supervisorctl.chmod(0o755)


@dataclass(frozen=True)
class SupervisorctlCall:
    time: float
    rc: int
    args: tuple[str, ...]


def supervisorctl_calls(root: Path) -> list[SupervisorctlCall]:
    """Every supervisorctl call on the host so far, in order."""
    try:
        lines = (root / SUPERVISORCTL_LOG).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    calls = []
    for line in lines:
        stamp, rc, args = line.split("\t", 2)
        calls.append(SupervisorctlCall(float(stamp), int(rc), tuple(shlex.split(args))))
    return calls


def set_supervisorctl_failing(root: Path, failing: bool, exit_code: int = 1) -> None:
    flag = root / SUPERVISORCTL_FAIL
    if failing:
        flag.write_text(f"{exit_code}\n", encoding="utf-8")
    else:
        flag.unlink(missing_ok=True)

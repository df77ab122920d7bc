"""SSM Run Command for the sandbox: the API moto lacks, and an agent per host that really runs the scripts.

Moto's SendCommand answers Success and runs nothing; DescribeInstanceInformation and ListCommandInvocations are
not implemented. Here a command sent to a sandbox host is queued for that host's agent (a worker thread) and
run exactly as sent, as one bash script (the ``commands`` lines joined by newlines), in the host's network
namespace of the sandbox VPC (``nsenter --net``; a host without one gets no network at all) and inside
``unshare --mount --pid``: the host's sandbox root is bind-mounted at ``/edx``, ``/etc`` is a per-host
overlay (so the script can rewrite ``/etc/memcached.conf`` and never touches the real one), and every process
the script leaves behind dies with it. The host's fake
``curl``/``systemctl`` come first on the agent's PATH, as a real agent has its own environment.

Statuses, truncation (24,000/8,000 characters), the 137 exit code of an execution timeout and the
"failed to run commands: exit status N" line follow the real agent. GetCommandInvocation answers
``InvocationDoesNotExist`` for ``invocation_delay`` seconds after SendCommand, as real SSM does.
"""

from edx_remote_cache.sandbox.ssm_agent.hosts import (
    HostRegistry,
    NamespaceRunner,
    SandboxHost,
    SandboxSetupError,
    ScriptResult,
)
from edx_remote_cache.sandbox.ssm_agent.service import AGENT_VERSION, SsmService

__all__ = [
    "AGENT_VERSION",
    "HostRegistry",
    "NamespaceRunner",
    "SandboxHost",
    "SandboxSetupError",
    "ScriptResult",
    "SsmService",
]

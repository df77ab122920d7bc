"""EC2 GetConsoleOutput: what a cache host printed while it booted, read without its SSM agent.

Used only for an instance that has not answered since it started (reconciler/boot.py), so it costs nothing
in the steady state. Needs `ec2:GetConsoleOutput` in the operator's IAM policy (docs/install.md).
"""

from __future__ import annotations

from edx_remote_cache.adapters.aws.clients import AwsClients
from edx_remote_cache.adapters.aws.errors import _call
from edx_remote_cache.domain.boot import decode_console_output


def console_output(clients: AwsClients, instance_id: str) -> str:
    """The instance's console output as text; "" while EC2 has none yet (the first minutes of a boot).

    botocore already base64-decodes `Output`; `decode_console_output` leaves text alone and decodes what a
    lower layer (a stub, another SDK) hands over still encoded. AwsError as for any call (errors.py).
    """
    response = _call(clients.ec2, "get_console_output", InstanceId=instance_id)
    return decode_console_output((response or {}).get("Output"))

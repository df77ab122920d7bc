"""AWS for the sandbox: moto's server on 127.0.0.1, behind a WSGI layer that records calls and is as strict as AWS.

Moto is kinder than AWS in ways that would let operator bugs through, so the layer in front of it refuses what
AWS refuses (measured against moto 5.2.5):

* RunInstances ``ClientToken`` is idempotent: a repeat returns the first launch, a changed request with the
  same token is ``IdempotentParameterMismatch`` (moto launches again).
* RunInstances with an AMI that does not exist is ``InvalidAMIID.NotFound`` (moto launches anyway).
* ModifyInstanceAttribute of ``instanceType``/``userData`` needs a stopped instance (``IncorrectInstanceState``).
* DeleteSecurityGroup of a group an instance or another group's rule still uses is ``DependencyViolation``.
* A fault can make new instances invisible to DescribeInstances for a while (EC2's eventual consistency).
* GetConsoleOutput returns what the instance printed at boot (moto: one canned string for all), see console.py.

Everything is per server, in the WSGI layer: moto's classes are not patched. Each server has its own AWS account
(moto's ``x-moto-account-id`` header, set on every request here), so sandboxes in one process, and ``mock_aws``
users of the default account, never see each other's state.
"""

from edx_remote_cache.sandbox.aws.console import ConsoleOutputs
from edx_remote_cache.sandbox.aws.frontend import (
    INTERNAL_USER_AGENT,
    ApiError,
    AwsCall,
    AwsFrontend,
    CallRecorder,
    Request,
    Response,
    ec2_error,
    json_error,
    json_response,
)
from edx_remote_cache.sandbox.aws.server import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    UBUNTU_AMI_ID,
    UBUNTU_AMI_PARAMETER,
    UBUNTU_ARM64_AMI_ID,
    UBUNTU_ARM64_AMI_PARAMETER,
    AwsServer,
    decode_user_data,
)
from edx_remote_cache.sandbox.aws.strict_ec2 import Ec2Strictness

__all__ = [
    "ACCESS_KEY_ID",
    "INTERNAL_USER_AGENT",
    "SECRET_ACCESS_KEY",
    "UBUNTU_AMI_ID",
    "UBUNTU_AMI_PARAMETER",
    "UBUNTU_ARM64_AMI_ID",
    "UBUNTU_ARM64_AMI_PARAMETER",
    "ApiError",
    "AwsCall",
    "AwsFrontend",
    "AwsServer",
    "CallRecorder",
    "ConsoleOutputs",
    "Ec2Strictness",
    "Request",
    "Response",
    "decode_user_data",
    "ec2_error",
    "json_error",
    "json_response",
]

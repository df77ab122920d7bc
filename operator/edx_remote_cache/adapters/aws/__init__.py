"""Thin boto3 adapter for the cache host, one module per concern (a package since it outgrew one file).

- `errors`: the terminal/retryable/already-done tables and the two call helpers every other module uses;
- `clients`: the region's boto3 clients, with botocore's standard retries as the one retry layer;
- `observe`: one batched read per region of what the operator owns, and the Open edX hosts;
- `lookups`: cached AMI / SSM parameter / subnet answers;
- `act`: plan execution, one idempotent call per action.

Everything callers used from the single module is re-exported here, so `from edx_remote_cache.adapters.aws
import X` keeps working.
"""

from edx_remote_cache.adapters.aws.act import (
    RECONFIGURE_TIMEOUT_SECONDS,
    SsmRunner,
    act,
)
from edx_remote_cache.adapters.aws.clients import (
    DEFAULT_MAX_ATTEMPTS,
    FILTER_VALUES_LIMIT,
    AwsClients,
    client_config,
    make_clients,
)
from edx_remote_cache.adapters.aws.errors import (
    ALREADY_DONE,
    CONNECTION_ERROR,
    RETRYABLE_CODES,
    SPENT_TOKEN_CODES,
    TERMINAL_CODES,
    TERMINAL_FOR_CALL,
    TERMINAL_PREFIXES,
    AwsError,
    RetryableAwsError,
    TerminalAwsError,
    classify,
    is_terminal_code,
)
from edx_remote_cache.adapters.aws.lookups import AMI_PARAMETER_TTL_SECONDS, CloudLookups, ImageInfo
from edx_remote_cache.adapters.aws.observe import (
    LIVE_STATES,
    PAGE_SIZE,
    EdxHostDirectory,
    RegionObserver,
    describe_edx_hosts,
    observe_region,
)

__all__ = [
    "ALREADY_DONE",
    "AMI_PARAMETER_TTL_SECONDS",
    "CONNECTION_ERROR",
    "DEFAULT_MAX_ATTEMPTS",
    "FILTER_VALUES_LIMIT",
    "LIVE_STATES",
    "PAGE_SIZE",
    "RECONFIGURE_TIMEOUT_SECONDS",
    "RETRYABLE_CODES",
    "SPENT_TOKEN_CODES",
    "TERMINAL_CODES",
    "TERMINAL_FOR_CALL",
    "TERMINAL_PREFIXES",
    "AwsClients",
    "AwsError",
    "CloudLookups",
    "EdxHostDirectory",
    "ImageInfo",
    "RegionObserver",
    "RetryableAwsError",
    "SsmRunner",
    "TerminalAwsError",
    "act",
    "classify",
    "client_config",
    "describe_edx_hosts",
    "is_terminal_code",
    "make_clients",
    "observe_region",
]

"""AWS for the sandbox (being split into modules; see frontend.py)."""

from edx_remote_cache.sandbox.aws.frontend import *  # noqa: F403
from edx_remote_cache.sandbox.aws.frontend import (  # noqa: F401
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    Response,
    decode_user_data,
    ec2_error,
    json_response,
)

"""SSM Run Command for the sandbox (being split into modules; see service.py)."""

from edx_remote_cache.sandbox.ssm_agent.service import *  # noqa: F403

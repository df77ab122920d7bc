"""The demo (being split into modules; see steps.py)."""

from edx_remote_cache.sandbox.demo.steps import *  # noqa: F403
from edx_remote_cache.sandbox.demo.steps import EXAMPLE, add_parser, run  # noqa: F401

"""Memcached probing (being split into modules; see pipelined.py)."""

from edx_remote_cache.adapters.probe.pipelined import *  # noqa: F403

"""edx-remote-cache: move an Open edX site's memcached onto its own EC2 host, and keep it there."""

__version__ = "0.1.0"

GROUP = "cache.openedx.org"
VERSION = "v1alpha1"
PLURAL = "edxremotecaches"
KIND = "EdxRemoteCache"
OWNER_TAG = "edx-remote-cache.openedx.org/owner"
OWNER_UID_TAG = "edx-remote-cache.openedx.org/owner-uid"
PROBE_SOURCE_ENV = (
    "EDX_REMOTE_CACHE_PROBE_SOURCE"  # the operator's probe source: security-group ids and/or CIDRs
)

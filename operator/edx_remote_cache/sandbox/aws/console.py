"""GetConsoleOutput answered with the instance's real boot log, not moto's canned text.

Moto returns the same fixed string for every instance, so an operator that diagnoses boot failures from the
console could never be tested against it. The sandbox's cache hosts keep what their boot printed (the user-data
steps and memcached's own stderr, sandbox/cache_hosts.py); this hook serves it base64-encoded, as EC2 does, and
without `Output` while an instance has printed nothing yet (EC2's first minutes).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from xml.sax.saxutils import escape

from edx_remote_cache.sandbox.aws.frontend import ApiError, AwsFrontend, Request, Response

_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


class ConsoleOutputs:
    """`console(instance_id)`: the boot log text, "" when nothing was printed, None for an unknown instance."""

    def __init__(self, console: Callable[[str], str | None]) -> None:
        self.console = console

    def install(self, frontend: AwsFrontend) -> None:
        frontend.on_before("ec2", "GetConsoleOutput", self._answer)

    def _answer(self, request: Request) -> Response:
        instance_id = str(request.params.get("InstanceId", ""))
        text = self.console(instance_id)
        if text is None:
            raise ApiError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        output = f"<output>{base64.b64encode(text.encode()).decode()}</output>" if text else ""
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<GetConsoleOutputResponse xmlns="{_NS}">'
            f"<requestId>{uuid.uuid4()}</requestId><instanceId>{escape(instance_id)}</instanceId>"
            f"<timestamp>{stamp}</timestamp>{output}</GetConsoleOutputResponse>"
        )
        return 200, [("Content-Type", "text/xml")], body.encode()

"""``edx-remote-cache demo``: the subcommand's arguments and its entry point (the terminal, the workdir, the
JSON report, the exit status)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from edx_remote_cache.sandbox.demo.display import Display
from edx_remote_cache.sandbox.demo.story import Demo

# ------------------------------------------------------------------------------------------------ the command


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="the whole loop in a sandbox VPC, narrated: apply, configure, probe, break, heal, delete (under a minute)",
        description="Start the sandbox (Kubernetes API, AWS, real memcached, two Open edX hosts, all on "
        "127.0.0.1), run the operator, apply an EdxRemoteCache and narrate what happens: Ready, the config "
        "pushed to lms.yml, real cache traffic, a killed memcached detected and healed, the delete reverting "
        "the hosts. Leaves nothing running, also on Ctrl-C.",
    )
    parser.add_argument(
        "--headless", action="store_true", help="no live table (for CI); same story and checks"
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="write a JSON report of the run here")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the sandbox's files (hosts' /edx, logs) and the operator log here "
        "(default: a temporary directory, removed at the end unless a step failed)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pause between steps, to read along (default: 1 on a terminal, 0 otherwise)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edx_remote_cache.sandbox.network import NetworkSetupError, check_capability

    try:
        check_capability()
    except NetworkSetupError as exc:
        print(f"edx-remote-cache demo: {exc}", file=sys.stderr)
        return 2
    stream = sys.stdout
    tty = stream.isatty() and os.environ.get("TERM") != "dumb"
    live = tty and not args.headless
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    display = Display(
        stream,
        live=live,
        table=not args.headless,
        color=tty and "NO_COLOR" not in os.environ,
        fancy=encoding.startswith("utf"),
        width=max(60, min(shutil.get_terminal_size((110, 24)).columns, 140)),
    )
    pause = args.pause if args.pause is not None else (1.0 if live else 0.0)
    workdir = (
        args.workdir.resolve() if args.workdir is not None else Path(tempfile.mkdtemp(prefix="erc-demo-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(display, workdir=workdir, pause=pause)

    display.say(
        display.style("edx-remote-cache demo", "bold")
        + " - memcached off the Open edX app server, onto its own EC2 host",
        wrap=True,
    )
    display.say(
        "Everything runs on 127.0.0.1: an emulated Kubernetes API and AWS, real memcached, two sandbox Open edX"
        " hosts, and the real operator process.",
        styles=("dim",),
        wrap=True,
    )

    previous_term = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM cleans up like Ctrl-C
        previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = demo.run()
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        display.say(f"report written to {args.report}", indent=3, styles=("dim",))
    if args.workdir is None:
        if report["ok"]:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            display.say(f"kept for a look: {workdir} (operator.log, the hosts' /edx)", indent=3)
    if demo.interrupted:
        return 130
    return 0 if report["ok"] else 1

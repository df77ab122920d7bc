"""The terminal: narration lines, and the live ``kubectl get erc``-like table row below them.

Thread-safe, because steps narrate from worker threads while the main thread redraws the row.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TextIO

from edx_remote_cache.sandbox.demo.config import NAME

COLUMNS = ("NAME", "PHASE", "READY", "HEALTHY", "ENDPOINT", "HIT RATIO", "HOSTS", "AGE")
COLUMN_GAP = "   "


# ------------------------------------------------------------------------------------------------ the table (pure)


def _format_age(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 120:
        return f"{int(seconds)}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


def _condition_status(obj: Mapping[str, Any], ctype: str) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status") or "-")
    return "-"


def table_row(
    obj: Mapping[str, Any] | None,
    *,
    age: float | None = None,
    name: str = NAME,
    hit_ratio: float | Literal["status"] | None = "status",
) -> dict[str, str]:
    """One ``kubectl get erc``-like row from an EdxRemoteCache (``None``: the object is gone).

    The hit ratio is ``status.health.hitRatio`` unless ``hit_ratio`` gives a fresher figure (the operator's
    ``/metrics``: the status keeps probe figures for its heartbeat, so they can be a minute old); None = unknown.
    """
    if obj is None:
        return {col: "-" for col in COLUMNS} | {"NAME": name, "PHASE": "(deleted)"}
    status = obj.get("status") or {}
    health = status.get("health") or {}
    ratio = health.get("hitRatio") if hit_ratio == "status" else hit_ratio
    hit = f"{round(ratio * 100)}%" if isinstance(ratio, int | float) and not isinstance(ratio, bool) else "-"
    hosts = status.get("hostsSummary")
    if not hosts:
        wanted = ((obj.get("spec") or {}).get("openedx") or {}).get("hosts") or []
        hosts = f"0/{len(wanted)}" if wanted else "-"
    return {
        "NAME": str((obj.get("metadata") or {}).get("name") or name),
        "PHASE": str(status.get("phase") or "-"),
        "READY": _condition_status(obj, "Ready"),
        "HEALTHY": _condition_status(obj, "CacheHealthy"),
        "ENDPOINT": ", ".join(status.get("endpoints") or []) or "-",
        "HIT RATIO": hit,
        "HOSTS": str(hosts),
        "AGE": _format_age(age),
    }


def render_table(rows: Sequence[Mapping[str, str]], *, width: int | None = None) -> list[str]:
    """Header + one line per row, columns aligned, each line cut to ``width`` characters when given."""
    widths = {col: max([len(col), *(len(str(row.get(col, "-"))) for row in rows)]) for col in COLUMNS}

    def line(values: Mapping[str, str]) -> str:
        text = COLUMN_GAP.join(str(values.get(col, "-")).ljust(widths[col]) for col in COLUMNS).rstrip()
        if width is not None and len(text) > width:
            text = text[: max(0, width - 1)] + "…"
        return text

    return [line({col: col for col in COLUMNS}), *(line(row) for row in rows)]


# ------------------------------------------------------------------------------------------------ terminal output

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def visible_len(text: str) -> int:
    """Length on screen: ANSI escape sequences take no room."""
    return len(_ANSI.sub("", text))


def wrap_visible(text: str, width: int, *, indent: str = "", subsequent: str = "") -> list[str]:
    """Greedy word wrap measuring what is visible (colored words keep their escape codes intact)."""
    lines: list[str] = []
    current, used = indent, len(indent)
    fresh = True  # nothing but the indent on the current line yet
    for word in text.split(" "):
        size = visible_len(word)
        if not fresh and used + 1 + size > width:
            lines.append(current)
            current, used, fresh = subsequent, len(subsequent), True
        if fresh:
            current, used, fresh = current + word, used + size, False
        else:
            current, used = f"{current} {word}", used + 1 + size
    lines.append(current)
    return lines


_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}


class Display:
    """Narration lines, plus the live table: redrawn in place below the narration on a terminal (``live``), or
    appended as plain lines whenever a row changes. Thread-safe: steps narrate from worker threads."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool = False,
        table: bool = True,
        color: bool = False,
        fancy: bool = True,
        width: int = 100,
    ) -> None:
        self.stream = stream
        self.live = live
        self.table = table
        self.color = color
        self.fancy = fancy
        self.width = width
        self.lock = threading.RLock()
        self._row: dict[str, str] | None = None
        self._activity = ""
        self._drawn = 0
        self._last_plain: tuple[tuple[str, str], ...] | None = None
        self._header_due = True

    # symbols, with an ASCII fallback for terminals that cannot show them
    @property
    def ok_mark(self) -> str:
        return "✓" if self.fancy else "ok"

    @property
    def fail_mark(self) -> str:
        return "✗" if self.fancy else "FAIL"

    @property
    def arrow(self) -> str:
        return "▸" if self.fancy else ">"

    def style(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        codes = ";".join(_STYLES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def say(self, text: str = "", *, indent: int = 0, styles: Sequence[str] = (), wrap: bool = False) -> None:
        """One narration line (or several, for text with newlines; ``wrap`` folds long lines)."""
        pad = " " * indent
        out: list[str] = []
        for part in text.split("\n") if text else [""]:
            if wrap:
                out += wrap_visible(part, self.width, indent=pad, subsequent=pad + "    ")
            else:
                out.append(pad + part)
        with self.lock:
            self._clear()
            for line in out:
                self.stream.write(self.style(line, *styles) + "\n")
            self._header_due = True
            self._draw()
            self.stream.flush()

    def set_row(self, row: Mapping[str, str] | None) -> None:
        with self.lock:
            self._row = dict(row) if row is not None else None
            if not self.table or self._row is None:
                return
            if self.live:
                self._clear()
                self._draw()
                self.stream.flush()
                return
            key = tuple((k, v) for k, v in self._row.items() if k != "AGE")
            if key == self._last_plain:
                return
            header, line = render_table([self._row])
            if self._header_due:
                self.stream.write("   " + self.style(header, "dim") + "\n")
            self.stream.write("   " + line + "\n")
            self.stream.flush()
            self._last_plain, self._header_due = key, False

    def set_activity(self, text: str) -> None:
        """A transient status line under the live table (``waiting for Ready ... 1.2 s``); live mode only."""
        with self.lock:
            self._activity = text
            if self.live and self.table:
                self._clear()
                self._draw()
                self.stream.flush()

    def freeze(self) -> None:
        """Live mode: leave a copy of the current table in the scrollback (plain mode appends rows anyway)."""
        with self.lock:
            if not (self.live and self.table and self._row is not None):
                return
            self._clear()
            header, row = render_table([self._row], width=self.width - 3)
            self.stream.write("   " + self.style(header, "dim") + "\n" + "   " + row + "\n")
            self._draw()
            self.stream.flush()

    def close(self) -> None:
        with self.lock:
            self._clear()
            self._row, self._activity = None, ""
            self.stream.flush()

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if not (self.live and self.table):
            return
        lines: list[str] = []
        if self._row is not None:
            header, row = render_table([self._row], width=self.width - 3)
            lines = ["   " + self.style(header, "dim"), "   " + self.style(row, "bold")]
        if self._activity:
            lines.append("   " + self.style(self._activity[: self.width - 3], "dim"))
        for line in lines:
            self.stream.write(line + "\n")
        self._drawn = len(lines)

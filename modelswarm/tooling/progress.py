"""Progress output for long work. Progress goes to stderr so that stdout stays clean for --json results."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_t0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line, prefixed with seconds since start."""
    err.print(f"[dim]{time.monotonic() - _t0:6.1f}s[/dim] {escape(message)}", markup=True, soft_wrap=True)

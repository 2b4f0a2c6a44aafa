"""Console output: rich tables when interactive, plain text for Jenkins and pipes.

Nothing here assumes a terminal. Every line that can carry user data goes
through ``redact`` so that a secret registered with ``add_secret`` never
reaches stdout, stderr or a log.
"""

from __future__ import annotations

import sys
from typing import Iterable, Sequence

from ..redact import add_secret, lock as _lock, redact, say  # noqa: F401  (re-exported)


def interactive(stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def warn(text: str) -> None:
    say(f"warning: {text}", err=True)


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence], stream=None) -> None:
    """A table: rich when interactive, aligned plain text otherwise."""
    stream = stream or sys.stdout
    rows = [[redact(str(cell)) for cell in row] for row in rows]
    if interactive(stream):
        from rich import box
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
        for header in headers:
            t.add_column(header, overflow="fold")
        for row in rows:
            t.add_row(*row)
        Console(file=stream).print(t)
        return
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            first = cell.splitlines()[0] if cell else ""
            widths[i] = min(max(widths[i], len(first)), 80)
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    with _lock:
        print("\n".join(lines), file=stream, flush=True)

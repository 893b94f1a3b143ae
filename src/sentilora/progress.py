"""The one progress display: a rich bar on a terminal, a log line every 30 s elsewhere (CI logs, nohup).

Training shows samples/s, loss and epoch with it; `sentilora evaluate` and `predict` show texts/s.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Self

from rich.console import Console

log = logging.getLogger(__name__)


class Progress:
    """Progress over `total` items (None: unknown) with rate and ETA, and optional named fields
    (e.g. ``epoch=1, loss="-"``) shown beside the bar and updated through `advance`.

    Use it as a context manager: the bar is drawn between enter and exit.
    """

    def __init__(self, total: int | None, label: str, *, unit: str = "samples", enabled: bool = True,
                 transient: bool = False, console: Console | None = None, log_every: float = 30.0,
                 **fields: Any) -> None:
        self.total, self.label, self.unit, self.enabled, self.log_every = total, label, unit, enabled, log_every
        self.fields = {k: _show(v) for k, v in fields.items()}
        self.done = self.seen = 0  # done: timed work (counted in the rate); seen: all of it
        self.t0 = self.last_log = time.perf_counter()
        console = console or Console(stderr=True)
        self.bar = None
        if not enabled or not console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn(f"[bold]{label}[/]"),
            *(TextColumn(f"{name} {{task.fields[{name}]}}") for name in self.fields),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=transient,
        )
        self.task = self.bar.add_task(label, total=total, rate="", **self.fields)

    def __enter__(self) -> Self:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, n: int, *, timed: bool = True, **fields: Any) -> None:
        """`n` more items done; `timed=False` for work done earlier (a resumed run's), left out of the rate."""
        if not self.enabled:
            return
        self.seen += n
        if timed:
            self.done += n
        self.fields.update({k: _show(v) for k, v in fields.items() if v is not None})
        now = time.perf_counter()
        rate = self.done / max(1e-9, now - self.t0)
        if self.bar is not None:
            self.bar.update(self.task, advance=n, rate=f"{rate:,.1f} {self.unit}/s", **self.fields)
        elif now - self.last_log >= self.log_every and rate > 0:
            self.last_log = now
            shown = "".join(f", {k} {v}" for k, v in self.fields.items())
            eta = "" if self.total is None else f", ETA {_minutes((self.total - self.seen) / rate)}"
            log.info("%s: %s/%s %s, %.1f %s/s%s%s", self.label, f"{self.seen:,}",
                     "?" if self.total is None else f"{self.total:,}", self.unit, rate, self.unit, shown, eta)


def _show(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _minutes(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"

"""A progress bar on stderr, shown only on a terminal and never with ``quiet``."""
from __future__ import annotations

import os
import sys
# tqdm: imported inside the functions that use them (optional heavy dependencies; `import ngconvert` stays light)


class Progress:
    def __init__(self, total: int, desc: str, quiet: bool = False):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            tqdm.monitor_interval = 0
            try:
                size = os.get_terminal_size(sys.stderr.fileno())
            except OSError:
                size = os.terminal_size((0, 0))
            # terminals that report no size (0x0) would otherwise get an invisible bar
            self.bar = tqdm(total=total, desc=desc, unit="task", file=sys.stderr,
                            ncols=size.columns or 80, nrows=size.lines or 24)
        self.bytes = 0

    def grow(self, n: int) -> None:
        """More tasks joined the plan (counted only once they are known)."""
        if self.bar is not None and n:
            self.bar.total += n
            self.bar.refresh()

    def phase(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(desc, refresh=True)

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(f"{self.bytes / 1e6:.1f} MB written", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TransferBar:
    """A progress display for transfers: the bar starts once the totals are known."""

    def __init__(self, desc: str, quiet: bool = False):
        self.desc, self.quiet = desc, quiet
        self.progress: Progress | None = None

    def start(self, total_objects: int, total_bytes: int) -> None:
        self.progress = Progress(total_objects, self.desc, quiet=self.quiet)

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        if self.progress is not None:
            self.progress.update(n, nbytes)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

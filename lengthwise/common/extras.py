"""Optional dependencies: the core install serves; plots and progress bars come with extras.

A core command that can do without an extra says so in one line and carries on, naming
the install that brings it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

BENCH_EXTRA = "pip install 'lengthwise[bench]'"
TRAIN_EXTRA = "pip install 'lengthwise[train]'"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def plotting_available(say: Callable[[str], None] = _stderr) -> bool:
    """True when matplotlib imports; otherwise one notice naming the extra, and False."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say(f"plots skipped: matplotlib is not installed ({BENCH_EXTRA})")
        return False
    return True


class _PlainProgress:
    """What the progress bar says, without tqdm: a line every tenth of the way."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n, self._shown = total, desc, 0, 0

    def update(self, count: int) -> None:
        self.n += count
        tenth = self.n * 10 // max(self.total, 1)
        if tenth > self._shown:
            self._shown = tenth
            _stderr(f"{self.desc}: {self.n}/{self.total}")

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str = "it"):
    """A tqdm bar on stderr (the ``train`` extra), else plain progress lines."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, unit=unit, file=sys.stderr, desc=desc)

"""Per-step training metrics as a CSV file (DVC plots read it: x = step), resume-aware.

One row per logged step; a metric absent on that step (e.g. the discriminator loss on a step without a
discriminator update) is an empty cell. Each row is flushed and fsynced. On resume, rows past the resumed
step are dropped, so a resumed run's file equals an uninterrupted run's (apart from the timing column).
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from larp.files import atomic_write_text


def _cell(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


class MetricsCSV:
    """Append-only CSV with a fixed header ``columns`` (the first column must be ``step``)."""

    def __init__(self, path: Path, columns: Sequence[str], resume_step: int | None) -> None:
        if not columns or columns[0] != "step":
            raise ValueError(f"metrics columns must start with 'step', got {list(columns)}")
        if len(set(columns)) != len(columns):
            raise ValueError(f"metrics columns repeat a name: {list(columns)}")
        self.path, self.columns = Path(path), list(columns)
        kept: list[list[str]] = []
        if resume_step is not None and self.path.is_file():
            rows = list(csv.reader(self.path.read_text().splitlines()))
            if not rows or rows[0] != self.columns:
                raise ValueError(
                    f"{self.path}: header {rows[0] if rows else []} differs from the run's "
                    f"columns {self.columns}; move the file away to start a new log"
                )
            kept = [r for r in rows[1:] if r and int(r[0]) <= resume_step]
        elif resume_step is not None:
            warnings.warn(
                f"{self.path} is missing; resumed run starts a new metrics file", RuntimeWarning, stacklevel=2
            )
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([self.columns, *kept])
        atomic_write_text(self.path, buf.getvalue())

    def append(self, row: Mapping[str, float | int | None]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"metrics {sorted(unknown)} are not among the declared columns {self.columns}")
        line = ",".join(_cell(row.get(c)) for c in self.columns) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

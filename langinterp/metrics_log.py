"""`metrics.csv` of a run: one row per logged step or epoch, kept across `--resume`.

Lightning's CSVLogger deletes an existing metrics file when its folder is not empty (a run directory never
is), and writes a `hparams.yaml` the run directory does not need; this logger appends to what is there and
rewrites the file atomically on every flush.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from langinterp.paths import atomic_write


class MetricsCSV(Logger):
    """Logger writing every logged metric to one CSV file, columns sorted, `epoch` and `step` included."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                self.rows = list(csv.DictReader(handle))
        self._dirty = False

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved recipe already sits in the run directory; nothing to add."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {key: float(value) for key, value in metrics.items()}
        row["step"] = step if step is not None else len(self.rows)
        self.rows.append(row)
        self._dirty = True

    @rank_zero_only
    def save(self) -> None:
        if not self._dirty:
            return
        columns = sorted({key for row in self.rows for key in row})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, buffer.getvalue())
        self._dirty = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

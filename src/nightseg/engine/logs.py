"""Loggers of a training run: TensorBoard and a CSV log that survives a resume."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from nightseg.core.io import atomic_path


def truncate_csv(path: Path, step: int) -> None:
    """Drop the rows a killed run logged after its last saved state (``step`` column >= `step`)."""
    if not path.is_file():
        return
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        fields = reader.fieldnames or []
    kept = [row for row in rows if not str(row.get("step", "")).isdigit() or int(row["step"]) < step]
    if "step" in fields and len(kept) != len(rows):
        with atomic_path(path) as tmp, tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run continues it instead."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` whose ``metrics.csv`` survives a resume (rows after the resumed step are dropped first)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

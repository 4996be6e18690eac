"""Rank-0 metric logging: one CSV per stage directory plus TensorBoard event files."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping


class MetricLogger:
    """Append rows of scalars to ``<dir>/metrics.csv`` and ``<dir>/tensorboard``. A no-op when disabled
    (non-zero ranks). On resume, rows past the resumed step are dropped first (they were logged after the
    checkpoint the run restarts from)."""

    def __init__(self, directory: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.dir = Path(directory)
        self.csv_path = self.dir / "metrics.csv"
        self._writer = None
        self._columns: list[str] | None = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.csv_path.is_file():
            rows = list(csv.DictReader(self.csv_path.open()))
            if rows:
                self._columns = list(rows[0].keys())
            if resume_step is not None:
                kept = [r for r in rows if int(float(r.get("step", 0))) <= resume_step]
                if len(kept) != len(rows):
                    self._rewrite(kept)
            else:
                self.csv_path.unlink()
                self._columns = None
        if tensorboard:
            from .._deps import available, install_hint, warn_once

            if not available("tensorboard"):
                warn_once("tensorboard", "tensorboard is not installed: metrics go to metrics.csv only, no "
                                         f"TensorBoard event files ({install_hint('tensorboard')})")
            else:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.dir / "tensorboard"),
                                             purge_step=resume_step + 1 if resume_step is not None else None)

    def _rewrite(self, rows):
        with self.csv_path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self._columns)
            w.writeheader()
            w.writerows(rows)

    def log(self, step: int, values: Mapping[str, float], global_step: int | None = None) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        if self._columns is None:
            self._columns = list(row)
            with self.csv_path.open("w", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self._columns).writeheader()
        with self.csv_path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore").writerow(row)
        if self._writer is not None:
            gs = int(global_step if global_step is not None else step)
            for k, v in values.items():
                self._writer.add_scalar(k, float(v), gs)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

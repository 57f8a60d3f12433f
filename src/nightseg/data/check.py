"""`nightseg data check NAME ROOT`: validate a user's copy of a dataset and print a summary.

For every part of the copy (the splits; for Dark Zurich also the train conditions) it lists the files
with the loader's own `scan`, then reads every sample with the loader's own `read_record`, so a copy that
passes the check loads. Reported: counts per split, unmatched files (images without label/mask/reference,
labels without image), stored label values and the class distribution, image sizes, and every defect
(corrupt file, size mismatch, unknown label value), one line each naming the file.

Exit codes: 0 clean, 1 defects found (0 with ``--skip-bad``, which reports what would be skipped),
2 the root does not have the dataset's layout (raised as a UserError).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nightseg.data import dataset_class
from nightseg.data.common import Listing, Record, class_share_summary, read_record
from nightseg.errors import UserError


@dataclass
class PartReport:
    """What the check found in one part (split) of the copy."""

    label: str
    listing: Listing
    defects: list[str] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    stored_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    train_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    invalid_pixels: int = 0
    mask_pixels: int = 0
    bad_samples: int = 0

    @property
    def all_defects(self) -> list[str]:
        """Unmatched files first, then unreadable samples."""
        orphans = [f"{p}: no matching image" for p in self.listing.orphans]
        return self.listing.missing + orphans + self.defects


@dataclass
class CheckReport:
    """The result of `check_dataset`."""

    dataset: str
    root: Path
    parts: list[PartReport]
    absent: list[str]
    expected_size: tuple[int, int] | None

    @property
    def defect_count(self) -> int:
        return sum(len(p.all_defects) for p in self.parts)


def _inspect(record: Record, label_map: Any) -> tuple[Record, dict[str, Any] | None, str | None]:
    try:
        return record, read_record(record, label_map), None
    except UserError as exc:
        return record, None, str(exc)


def check_part(label: str, listing: Listing, label_map: Any, workers: int | None = None) -> PartReport:
    """Read every record of `listing` and tally sizes, label values and defects."""
    report = PartReport(label, listing)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda r: _inspect(r, label_map), listing.records)
        for _record, arrays, error in tqdm(results, total=len(listing.records), desc=label, leave=False,
                                           disable=None):
            if error is not None:
                report.defects.append(error)
                report.bad_samples += 1
                continue
            h, w = arrays["image"].shape[:2]
            report.sizes[(w, h)] += 1
            if "label_counts" in arrays:
                counts = arrays["label_counts"]
                report.stored_counts += counts
                np.add.at(report.train_counts, label_map.lut, counts)
            if "invalid" in arrays:
                report.invalid_pixels += int(arrays["invalid"].sum())
                report.mask_pixels += arrays["invalid"].size
    return report


def check_dataset(name: str, root: str | Path, split: str | None = None, workers: int | None = None) -> CheckReport:
    """Check the copy of dataset `name` at `root` (only `split` when given) and return the report.

    Raises a UserError (exit code 2) when the root does not exist or none of the checked splits has
    the dataset's layout.
    """
    cls = dataset_class(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found")
    plan = cls.check_plan(root)
    if split is not None:
        cls.check_split(split)
        plan = [item for item in plan if item[1] == split] or [(split, split, {})]
    parts, absent, first_error = [], [], None
    for label, part_split, kw in plan:
        if not cls.split_present(root, part_split, **kw):
            absent.append(label)
            if first_error is None:
                try:
                    cls.scan(root, part_split, **kw)
                except UserError as exc:
                    first_error = exc
            continue
        listing = cls.scan(root, part_split, **kw)
        parts.append(check_part(label, listing, listing.label_map or cls.LABEL_MAP, workers))
    if not parts:
        raise first_error or UserError(f"{root}: no {cls.DATASET} split found")
    return CheckReport(cls.DATASET, root, parts, absent, cls.EXPECTED_SIZE)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _values(counts: np.ndarray) -> str:
    present = np.flatnonzero(counts)
    shown = ", ".join(str(v) for v in present[:40])
    return shown + (f", ... ({present.size} distinct)" if present.size > 40 else "")


def format_report(report: CheckReport, skip_bad: bool = False) -> list[str]:
    """Return the printed summary of a check as lines."""
    lines = [f"{report.dataset} at {report.root}"]
    for part in report.parts:
        n = len(part.listing.records)
        unmatched = len(part.listing.missing) + len(part.listing.orphans)
        readable = n - part.bad_samples
        lines.append(f"{part.label}: {_plural(n, 'sample')} ({readable} readable), {_plural(unmatched, 'unmatched file')}"
                     + ("" if part.listing.labelled else ", unlabelled"))
        sizes = ", ".join(f"{w}x{h} ({c})" for (w, h), c in part.sizes.most_common(5))
        lines.append(f"  image sizes: {sizes or '-'}")
        if report.expected_size and part.sizes and set(part.sizes) != {report.expected_size}:
            off = sum(c for s, c in part.sizes.items() if s != report.expected_size)
            w, h = report.expected_size
            lines.append(f"  note: {_plural(off, 'image')} not {w}x{h}, the size {report.dataset} is distributed at")
        if part.listing.labelled and part.stored_counts.any():
            lines.append(f"  label values (stored): {_values(part.stored_counts)}")
            lines.append(f"  classes: {class_share_summary(part.train_counts)}")
        if part.mask_pixels:
            lines.append(f"  invalid pixels: {100 * part.invalid_pixels / part.mask_pixels:.1f}%")
        lines.extend(f"  {note}" for note in part.listing.notes)
    if report.absent:
        lines.append(f"not present (skipped): {', '.join(report.absent)}")
    defects = [d for part in report.parts for d in part.all_defects]
    if defects:
        lines.append(f"DEFECTS ({len(defects)}):")
        lines.extend(f"  {d}" for d in defects)
        lines.append(f"result: {_plural(len(defects), 'defect')}"
                     + (" — with --skip-bad these samples are skipped and the rest loads" if skip_bad else
                        " — fix them, or load with --skip-bad / skip_bad=True to skip them"))
    else:
        total = sum(len(p.listing.records) for p in report.parts)
        lines.append(f"result: clean ({_plural(total, 'sample')})")
    return lines


def run_check(name: str, root: str | Path, split: str | None = None, skip_bad: bool = False,
              out: Callable[[str], None] = print) -> int:
    """Check a copy, print the summary through `out`, and return the exit code (0 clean, 1 defects)."""
    report = check_dataset(name, root, split)
    for line in format_report(report, skip_bad):
        out(line)
    if report.defect_count == 0:
        return 0
    usable = sum(len(p.listing.records) - p.bad_samples for p in report.parts)
    return 0 if skip_bad and usable > 0 else 1


__all__ = ["CheckReport", "PartReport", "check_dataset", "format_report", "run_check"]

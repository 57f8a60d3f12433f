"""`nightseg data check NAME ROOT`: validate a user's copy of a dataset and print a summary.

For every part of the copy (the splits; for Dark Zurich also the train conditions) it lists the files
with the loader's own `scan`, then reads every sample with the loader's own `read_record`, so a copy that
passes the check loads. Reported: counts per split, unmatched files (images without label/mask/reference,
labels without image), stored label values and the class distribution, image sizes, and every defect
(corrupt file, size mismatch, unknown label value), one line each naming the file.

Selection: the keyword arguments a loader takes to choose *which* data it reads (BDD100K's
``night_list``/``timeofday``/``attributes_json``, ACDC's ``conditions``/``with_reference``, Dark Zurich's
``condition``, the pairs' ``pairs_csv``, NightCity's ``label_dir``, Cityscapes' ``label_type``, the folder
dataset's ``labelled``) can be given to `check_dataset` (CLI: the options of `SELECTION_FLAGS`), so that
the check reads exactly what the loader would. An option the dataset's loader does not take is a
UserError naming the datasets it applies to.

Exit codes: 0 clean, 1 defects found (0 with ``--skip-bad``, which reports what would be skipped),
2 the root does not have the dataset's layout, or a selection option does not apply (a UserError).
"""

from __future__ import annotations

import inspect
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nightseg.core.errors import UserError
from nightseg.data import DATASETS, dataset_class
from nightseg.data.common import Listing, Record, class_share_summary, read_record

SELECTION_FLAGS: dict[str, str] = {
    "night_list": "--night-list",
    "timeofday": "--timeofday",
    "attributes_json": "--attributes-json",
    "conditions": "--condition",
    "condition": "--condition",
    "with_reference": "--references/--no-references",
    "pairs_csv": "--pairs",
    "label_dir": "--label-dir",
    "label_type": "--label-type",
    "labelled": "--unlabelled",
}
"""Loader keyword -> the `nightseg data check` option that sets it."""
NOT_SELECTION = frozenset({"transform", "skip_bad", "label_map", "pair_geometry"})
"""Keyword-only loader arguments that change how samples are served, not which files are read."""
PLAN_FILTERS = frozenset({"condition"})
"""Keywords that `check_plan` enumerates one part per value (Dark Zurich's train conditions): selecting
values keeps those parts instead of passing the value to every part."""


def selection_options(cls: type) -> tuple[str, ...]:
    """Return the data-selection keywords of loader `cls`: its keyword-only constructor arguments
    except those in `NOT_SELECTION`."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in NOT_SELECTION)


def _flag(key: str) -> str:
    return SELECTION_FLAGS.get(key, f"{key}=")


def _validate_selection(name: str, cls: type, selection: dict[str, Any]) -> None:
    accepted = selection_options(cls)
    for key in selection:
        if key not in accepted:
            flag = _flag(key)
            users = [n for n, c in DATASETS.items() if any(_flag(k) == flag for k in selection_options(c))]
            where = f"it applies to {', '.join(users)} only" if users else "no dataset takes it"
            takes = ", ".join(dict.fromkeys(_flag(k) for k in accepted)) or "no selection option"
            raise UserError(f"{flag} does not apply to {name}: {where} ({name} takes {takes}); drop it")


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _default(cls: type, key: str) -> Any:
    return inspect.signature(cls.__init__).parameters[key].default


def select_parts(cls: type, plan: list[tuple[str, str, dict[str, Any]]],
                 selection: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Apply `selection` to a check plan: a `PLAN_FILTERS` keyword keeps the parts whose value was
    selected (``"all"`` keeps every part); any other keyword is passed to the scan of every part."""
    out = []
    for label, part_split, kw in plan:
        merged, keep = dict(kw), True
        for key, value in selection.items():
            if key not in PLAN_FILTERS:
                merged[key] = value
                continue
            wanted = _as_tuple(value)
            offered = {item_kw.get(key, _default(cls, key)) for _, _, item_kw in plan}
            bad = [v for v in wanted if v not in offered and v != "all"]
            if bad:
                parts = ", ".join(item[0] for item in plan)
                raise UserError(f"{cls.DATASET} {key} {bad[0]!r} ({_flag(key)}): expected one of "
                                f"{', '.join(sorted(offered))} or 'all' for the parts checked ({parts})")
            keep = keep and ("all" in wanted or kw.get(key, _default(cls, key)) in wanted)
        if keep:
            out.append((label, part_split, merged))
    return out


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
    selection: dict[str, Any] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)

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


def check_dataset(name: str, root: str | Path, split: str | None = None, workers: int | None = None,
                  **selection: Any) -> CheckReport:
    """Check the copy of dataset `name` at `root` (only `split` when given) and return the report.

    `selection` holds the loader's data-selection keywords (see `selection_options`; None = not given),
    e.g. ``timeofday="night"`` for BDD100K or ``conditions=["night"]`` for ACDC: the check reads what the
    loader built with them would read. Raises a UserError (exit code 2) when the root does not exist,
    none of the checked splits has the dataset's layout, or a selection keyword does not apply to the
    dataset. With a selection and no `split`, a split that the selection cannot be applied to (e.g.
    BDD100K test, which has no timeofday attributes) is listed as not checked, with the reason.
    """
    cls = dataset_class(name)
    selection = {k: v for k, v in selection.items() if v is not None}
    _validate_selection(name, cls, selection)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found")
    plan = cls.check_plan(root)
    if split is not None:
        cls.check_split(split)
        plan = [item for item in plan if item[1] == split] or [(split, split, {})]
    plan = select_parts(cls, plan, selection)
    parts, absent, unchecked, first_error = [], [], [], None
    for label, part_split, kw in plan:
        if not cls.split_present(root, part_split, **kw):
            absent.append(label)
            if first_error is None:
                try:
                    cls.scan(root, part_split, **kw)
                except UserError as exc:
                    first_error = exc
            continue
        try:
            listing = cls.scan(root, part_split, **kw)
        except UserError as exc:
            if split is not None or not selection:
                raise
            unchecked.append(f"{label} ({exc})")
            first_error = first_error or exc
            continue
        parts.append(check_part(label, listing, listing.label_map or cls.LABEL_MAP, workers))
    if not parts:
        raise first_error or UserError(f"{root}: no {cls.DATASET} split found")
    return CheckReport(cls.DATASET, root, parts, absent, cls.EXPECTED_SIZE, selection, unchecked)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _values(counts: np.ndarray) -> str:
    present = np.flatnonzero(counts)
    shown = ", ".join(str(v) for v in present[:40])
    return shown + (f", ... ({present.size} distinct)" if present.size > 40 else "")


def format_report(report: CheckReport, skip_bad: bool = False) -> list[str]:
    """Return the printed summary of a check as lines."""
    chosen = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                       for k, v in report.selection.items())
    lines = [f"{report.dataset} at {report.root}" + (f" ({chosen})" if chosen else "")]
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
    lines.extend(f"not checked: {reason}" for reason in report.unchecked)
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
              out: Callable[[str], None] = print, **selection: Any) -> int:
    """Check a copy (with the loader's `selection` keywords, see `check_dataset`), print the summary
    through `out`, and return the exit code (0 clean, 1 defects)."""
    report = check_dataset(name, root, split, **selection)
    for line in format_report(report, skip_bad):
        out(line)
    if report.defect_count == 0:
        return 0
    usable = sum(len(p.listing.records) - p.bad_samples for p in report.parts)
    return 0 if skip_bad and usable > 0 else 1


__all__ = ["SELECTION_FLAGS", "CheckReport", "PartReport", "check_dataset", "format_report", "run_check",
           "select_parts", "selection_options"]

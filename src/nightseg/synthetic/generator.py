"""The synthetic day/night street-scene benchmark: presets, samples and the dataset writer.

`generate()` writes one folder holding three datasets in the **real datasets' on-disk layouts**, so the
real loaders read them unchanged:

- ``cityscapes/``: labelled day scenes (source domain), ``leftImg8bit/{train,val}/<city>/...`` and
  ``gtFine/{train,val}/<city>/..._gtFine_{labelIds,labelTrainIds}.png``; frames show the ego vehicle's
  bonnet (labelId 1, ignored), as Cityscapes does;
- ``dark_zurich/``: the target domain: unlabelled day/night pairs under ``rgb_anon/train/{day,night}/<SEQ>/``
  with the night->day pair list ``zurich_dn_pair_train.csv``, and labelled night val frames under
  ``rgb_anon/val/night/<SEQ>/`` with ``gt/val/night/<SEQ>/..._gt_{labelTrainIds,labelIds,invIds}.png``;
- ``NightCity/``: labelled night scenes, ``images/{train,val}/<name>.png`` and
  ``label/{train,val}/<name>_labelIds.png`` (Cityscapes labelIds).

Every scene has its own seed derived from ``numpy.random.SeedSequence(seed, spawn_key=(split, index))``,
so the output is byte-identical for a given seed whatever the number of worker processes, and a killed
run can be resumed (existing files are kept unless ``overwrite``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path, write_json, write_png
from nightseg.synthetic.render import INVALID_V, Frame, render
from nightseg.synthetic.scene import Scene, build_scene

log = logging.getLogger("nightseg")

GENERATOR_VERSION = "1.1"
"""Bumped whenever the same seed would produce different pixels."""


@dataclass(frozen=True)
class Split:
    """One generated split: where it goes, what is rendered, and its seed stream."""

    key: str  # the count name (CLI: --num-<key with - for _>)
    code: int  # spawn key of its seed stream: never change, or every dataset changes
    dataset: str
    split: str
    mode: str  # "day" (labelled), "night" (labelled), "pair" (unlabelled day + night)


SPLITS: tuple[Split, ...] = (
    Split("train", 0, "cityscapes", "train", "day"),
    Split("val", 1, "cityscapes", "val", "day"),
    Split("pairs", 2, "dark_zurich", "train", "pair"),
    Split("night_val", 3, "dark_zurich", "val", "night"),
    Split("night_train", 4, "NightCity", "train", "night"),
    Split("nightcity_val", 5, "NightCity", "val", "night"),
)
SPLIT_BY_KEY = {s.key: s for s in SPLITS}

PRESETS: dict[str, dict] = {
    # tests: a few seconds
    "tiny": {"size": (64, 128), "counts": {"train": 6, "val": 3, "pairs": 6, "night_val": 3, "night_train": 6,
                                            "nightcity_val": 3}},
    # the demo: small images so that three models train on two CPU cores in minutes
    "small": {"size": (128, 256), "counts": {"train": 300, "val": 60, "pairs": 300, "night_val": 60,
                                             "night_train": 300, "nightcity_val": 60}},
    # GPU runs: the real datasets' sizes (Cityscapes 2975/500, Dark Zurich 2416 pairs, NightCity 2998/1299);
    # night val is larger than Dark Zurich's 50 frames for stable numbers
    "full": {"size": (512, 1024), "counts": {"train": 2975, "val": 500, "pairs": 2416, "night_val": 200,
                                             "night_train": 2998, "nightcity_val": 1299}},
}

CITIES = {"train": ["nightsegtown", "lumenfeld", "dunkelberg", "laternhausen"], "val": ["schattenau", "mondbach"]}
NIGHTCITY_PREFIX = {"train": "noctopolis", "val": "nachtwil"}
FRAMES_PER_SEQ = 40
SEQ_BASE = {"night": 9000, "day": 9500, "val": 9900}
CSV_NAME = "zurich_dn_pair_train.csv"


# --- names -----------------------------------------------------------------------------------------------


def cityscapes_stem(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of Cityscapes-layout scene `index`: ``<city>_<seq:06d>_<frame:06d>``."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def zurich_stem(kind: str, index: int) -> tuple[str, str]:
    """(sequence, stem) of Dark-Zurich-layout frame `index` (kind: night, day or val)."""
    seq = f"GOPR{SEQ_BASE[kind] + index // FRAMES_PER_SEQ:04d}"
    return seq, f"{seq}_frame_{index % FRAMES_PER_SEQ + 1:06d}"


def nightcity_stem(split: str, index: int) -> str:
    """File stem of NightCity-layout scene `index`."""
    return f"{NIGHTCITY_PREFIX[split]}_{index + 1:05d}"


def sample_files(out: Path, split: Split, index: int) -> dict[str, Path]:
    """The files a scene of `split` writes, by role (image, day, night, label_ids, train_ids, invalid)."""
    if split.dataset == "cityscapes":
        city, stem = cityscapes_stem(split.split, index)
        root = out / "cityscapes"
        gt = root / "gtFine" / split.split / city
        return {
            "image": root / "leftImg8bit" / split.split / city / f"{stem}_leftImg8bit.png",
            "label_ids": gt / f"{stem}_gtFine_labelIds.png",
            "train_ids": gt / f"{stem}_gtFine_labelTrainIds.png",
        }
    if split.dataset == "dark_zurich":
        root = out / "dark_zurich"
        if split.mode == "pair":
            nseq, nstem = zurich_stem("night", index)
            dseq, dstem = zurich_stem("day", index)
            return {
                "night": root / "rgb_anon" / "train" / "night" / nseq / f"{nstem}_rgb_anon.png",
                "day": root / "rgb_anon" / "train" / "day" / dseq / f"{dstem}_rgb_anon.png",
            }
        seq, stem = zurich_stem("val", index)
        gt = root / "gt" / split.split / "night" / seq
        return {
            "image": root / "rgb_anon" / split.split / "night" / seq / f"{stem}_rgb_anon.png",
            "train_ids": gt / f"{stem}_gt_labelTrainIds.png",
            "label_ids": gt / f"{stem}_gt_labelIds.png",
            "invalid": gt / f"{stem}_gt_invIds.png",
        }
    stem = nightcity_stem(split.split, index)
    root = out / "NightCity"
    return {
        "image": root / "images" / split.split / f"{stem}.png",
        "label_ids": root / "label" / split.split / f"{stem}_labelIds.png",
    }


def pair_csv_row(index: int) -> str:
    """One line of ``zurich_dn_pair_train.csv``: night frame, day frame (no extension, no header)."""
    nseq, nstem = zurich_stem("night", index)
    dseq, dstem = zurich_stem("day", index)
    return f"train/night/{nseq}/{nstem},train/day/{dseq}/{dstem}"


# --- samples ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One generated scene: a labelled frame, or (mode "pair") a day and a night frame of one layout."""

    split: Split
    index: int
    frame: Frame | None = None
    day: Frame | None = None
    night: Frame | None = None
    offset: dict | None = None
    scene: Scene | None = None


def _rngs(seed: int, split: Split, index: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence(int(seed), spawn_key=(split.code, int(index)))
    return [np.random.default_rng(s) for s in ss.spawn(4)]


def make_sample(split: str | Split, index: int, seed: int = 0, size: tuple[int, int] = (256, 512)) -> Sample:
    """Generate scene `index` of `split` (a key of SPLIT_BY_KEY) in memory; deterministic in (seed, index).

    Pairs share the static layout, differ in traffic, and the night frame is seen from a slightly
    offset camera (``Sample.offset``: metres, pixels and zoom).
    """
    sp = SPLIT_BY_KEY[split] if isinstance(split, str) else split
    h, w = size
    r_scene, r_a, r_b, r_off = _rngs(seed, sp, index)
    domain = sp.dataset
    scene = build_scene(r_scene, h, w, domain, n_dynamic=2 if sp.mode == "pair" else 1)
    out = Sample(sp, index, scene=scene)
    if sp.mode == "day":
        out.frame = render(scene, 0, False, r_a, hood=domain == "cityscapes")
    elif sp.mode == "night":
        out.frame = render(scene, 0, True, r_a)
    else:
        out.day = render(scene, 0, False, r_a)
        cam, out.offset = scene.camera.offset(r_off)
        out.night = render(scene, 1, True, r_b, camera=cam)
    return out


def _is_written(job: tuple) -> bool:
    """Return whether every file of the scene of `job` exists (files are written atomically: existing = whole)."""
    out, key, index = job[:3]
    return all(p.is_file() for p in sample_files(Path(out), SPLIT_BY_KEY[key], index).values())


def _write_sample(job: tuple) -> int:
    """Worker: render one scene unless all its files exist; return the number of files written."""
    out, key, index, seed, size, overwrite = job
    sp = SPLIT_BY_KEY[key]
    files = sample_files(Path(out), sp, index)
    if not overwrite and all(p.is_file() for p in files.values()):
        return 0
    s = make_sample(sp, index, seed, size)
    if sp.mode == "pair":
        write_png(files["day"], s.day.image)
        write_png(files["night"], s.night.image)
        return 2
    f = s.frame
    write_png(files["image"], f.image)
    write_png(files["label_ids"], f.label_ids)
    if "train_ids" in files:
        write_png(files["train_ids"], f.train_ids)
    if "invalid" in files:
        write_png(files["invalid"], f.invalid.astype(np.uint8))
    return len(files)


# --- dataset ---------------------------------------------------------------------------------------------


def resolve_config(preset: str = "small", size: tuple[int, int] | None = None,
                   counts: dict[str, int | None] | None = None) -> tuple[tuple[int, int], dict[str, int]]:
    """Return (size, counts) of `preset` with overrides applied; raise UserError for invalid values."""
    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: unknown preset; expected one of {', '.join(PRESETS)}")
    h, w = size or PRESETS[preset]["size"]
    if h < 32 or w < 32 or h % 2 or w % 2:
        raise UserError(f"--size {h}x{w}: height and width must be even and at least 32 pixels")
    merged = dict(PRESETS[preset]["counts"])
    for k, v in (counts or {}).items():
        if k not in merged:
            raise UserError(f"count {k!r}: unknown split; expected one of {', '.join(merged)}")
        if v is not None:
            if v < 0:
                raise UserError(f"--num-{k.replace('_', '-')} {v}: must be >= 0")
            merged[k] = int(v)
    if merged["pairs"] > (SEQ_BASE["day"] - SEQ_BASE["night"]) * FRAMES_PER_SEQ:
        raise UserError(f"--num-pairs {merged['pairs']}: at most {(SEQ_BASE['day'] - SEQ_BASE['night']) * FRAMES_PER_SEQ}")
    return (int(h), int(w)), merged


def _manifest(seed: int, size: tuple[int, int], counts: dict[str, int], preset: str, complete: bool) -> dict:
    return {
        "generator": "nightseg synth",
        "version": GENERATOR_VERSION,
        "preset": preset,
        "seed": int(seed),
        "size": [int(size[0]), int(size[1])],
        "counts": counts,
        "complete": complete,
        "datasets": {
            "cityscapes": {"train": counts["train"], "val": counts["val"], "labels": "gtFine labelIds + labelTrainIds",
                           "ego_vehicle": "bottom rows, labelId 1 (ignored)"},
            "dark_zurich": {"train_pairs": counts["pairs"], "val_night": counts["night_val"],
                            "pairs_csv": f"dark_zurich/{CSV_NAME}",
                            "invIds": f"1 = invalid (too dark: mean noise-free V < {INVALID_V} over a small window), 0 = valid"},
            "NightCity": {"train": counts["night_train"], "val": counts["nightcity_val"], "labels": "labelIds"},
        },
    }


OWNED = ("cityscapes", "dark_zurich", "NightCity", "manifest.json")
"""What `generate` writes under its output folder (and removes with ``overwrite``)."""


def generate(out: str | os.PathLike, preset: str = "small", size: tuple[int, int] | None = None, seed: int = 0,
             counts: dict[str, int | None] | None = None, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Write the synthetic benchmark under `out` and return its manifest (also saved as manifest.json).

    Rerunning into a finished or interrupted folder with the same settings only renders missing files;
    different settings need ``overwrite=True`` (which first deletes the generated sub-folders).
    """
    out = Path(out)
    size, counts = resolve_config(preset, size, counts)
    if workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    manifest_path = out / "manifest.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    foreign = [n for n in OWNED[:3] if (out / n).exists()]
    if foreign and not _is_ours(manifest_path):
        raise UserError(f"{out}: already holds {', '.join(foreign)} not generated by nightseg synth "
                        "(no synth manifest.json); choose an empty or new --out")
    if overwrite:
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    was_finished = False
    if not overwrite and manifest_path.is_file():
        old = _read_manifest(manifest_path)
        was_finished = bool(old.get("complete"))
        mine = _manifest(seed, size, counts, preset, False)
        for k in ("version", "seed", "size", "counts"):
            if old.get(k) != mine[k]:
                raise UserError(
                    f"{out}: already holds a synthetic set with {k}={old.get(k)} (asked {mine[k]}); "
                    "use --overwrite to replace it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest_path, _manifest(seed, size, counts, preset, False))
    jobs = [(str(out), sp.key, i, seed, size, overwrite) for sp in SPLITS for i in range(counts[sp.key])]
    todo = jobs if overwrite else [j for j in jobs if not _is_written(j)]
    done = len(jobs) - len(todo)
    if was_finished and done == len(jobs):
        log.info("%s: synthetic set already complete (%d scenes)", out, len(jobs))
    elif done:
        log.info("%s: resuming: %d of %d scenes already written", out, done, len(jobs))
    # a resumed run: the bar starts at the scenes already on disk
    bar = tqdm(total=len(jobs), initial=done, desc="synth", unit="scene", disable=not progress)
    for _ in _run(todo, workers):
        bar.update(1)
    bar.close()
    rows = [pair_csv_row(i) for i in range(counts["pairs"])]
    with atomic_path(out / "dark_zurich" / CSV_NAME) as tmp:
        tmp.write_text("".join(r + "\n" for r in rows))
    manifest = _manifest(seed, size, counts, preset, True)
    write_json(manifest_path, manifest)
    return manifest


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc}); delete the folder or choose another --out") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a nightseg synth manifest; choose another --out")
    return data


def _is_ours(path: Path) -> bool:
    return path.is_file() and _read_manifest(path).get("generator") == "nightseg synth"


def _run(jobs: list[tuple], workers: int) -> Iterator[int]:
    if workers == 1 or len(jobs) < 2:
        for j in jobs:
            yield _write_sample(j)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_write_sample, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "SPLITS",
    "SPLIT_BY_KEY",
    "Sample",
    "generate",
    "make_sample",
    "pair_csv_row",
    "resolve_config",
    "sample_files",
]

"""Seeded mutation fuzzing of every NightSeg reader (used by tests/test_fuzz.py and bench/bench_fuzz.py).

Each reader gets valid seed files (written once per `Seeds` folder) and `mutate_*` functions that break them
in one seeded way (bit flips, truncation, random bytes, wrong modes / ids / sizes, junk YAML / JSON values);
`fuzz(reader, n, seed, work)` feeds it `n` mutated inputs. An input passes when the reader returns normally or
raises a `UserError` whose message is one line; anything else (another exception: a traceback for the user)
is a failure, recorded with the case that caused it. Case `i` of a reader depends only on (seed, i).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from nightseg.core.errors import UserError

JUNK_VALUES: list[Any] = [None, -1, 0, 3, 1.5, -0.0, True, "", "x", "1x2", [], [1, "a"], {}, {"a": 1}, 1e309, "nan"]
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- byte mutators
def mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """Return `data` broken in one seeded way: bit flips, truncation, insertion, overwrite, zeros, random."""
    kind = int(rng.integers(0, 7))
    n = len(data)
    if kind == 0 and n:  # flip 1-16 bits
        buf = bytearray(data)
        for pos in rng.integers(0, n, int(rng.integers(1, 17))):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf)
    if kind == 1:  # cut short
        return data[: int(rng.integers(0, max(1, n)))]
    if kind == 2:  # insert random bytes
        pos = int(rng.integers(0, n + 1))
        return data[:pos] + rng.bytes(int(rng.integers(1, 64))) + data[pos:]
    if kind == 3 and n:  # overwrite a chunk
        pos = int(rng.integers(0, n))
        chunk = rng.bytes(int(rng.integers(1, 128)))
        return data[:pos] + chunk + data[pos + len(chunk):]
    if kind == 4 and n:  # zero the tail
        pos = int(rng.integers(0, n))
        return data[:pos] + bytes(n - pos)
    if kind == 5:
        return b""
    return rng.bytes(int(rng.integers(1, 4096)))


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- seed files
@dataclass
class Seeds:
    """Valid inputs of every reader, written once under `folder` (created lazily, reader by reader)."""

    folder: Path
    made: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, make: Callable[[Path], Any]) -> Any:
        if key not in self.made:
            target = self.folder / key
            target.mkdir(parents=True, exist_ok=True)
            self.made[key] = make(target)
        return self.made[key]

    def photo(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        return rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)

    def synthetic(self) -> Path:
        def make(folder: Path) -> Path:
            from nightseg.synthetic.generator import generate

            counts = {"train": 2, "val": 2, "pairs": 2, "night_val": 2, "night_train": 2, "nightcity_val": 2}
            generate(folder, preset="tiny", counts=counts, progress=False)
            return folder
        return self.get("synthetic", make)

    def checkpoint(self) -> Path:
        def make(folder: Path) -> Path:
            from nightseg.core.checkpoint import save_checkpoint
            from nightseg.models import build_segmenter

            torch.manual_seed(0)
            model = build_segmenter("pspnet_tiny").eval()
            return save_checkpoint(folder / "m.safetensors", model.state_dict(), {"model": model.config, "step": 1})
        return self.get("checkpoint", make)

    def onnx(self) -> Path:
        def make(folder: Path) -> Path:
            from nightseg.inference.network import load_inference_net
            from nightseg.inference.onnx import export_onnx

            net, _ = load_inference_net(self.checkpoint(), False)
            path = folder / "m.onnx"
            export_onnx(net, path, size=(32, 32), check=False)
            return path
        return self.get("onnx", make)

    def video(self) -> Path:
        def make(folder: Path) -> Path:
            import cv2

            path = folder / "v.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
            rng = np.random.default_rng(0)
            for _ in range(6):
                writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            writer.release()
            return path
        return self.get("video", make)


# ----------------------------------------------------------------------------------------------- readers
def case_image(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """An image file in a random format or mode, half the time byte-mutated -> `read_image_with_info`."""
    from nightseg.core.io import read_image_with_info

    photo = seeds.photo()
    img = Image.fromarray(photo)
    variants = {
        "png": lambda: _encoded(img, "PNG"), "jpeg": lambda: _encoded(img, "JPEG"), "bmp": lambda: _encoded(img, "BMP"),
        "tiff": lambda: _encoded(img, "TIFF"), "webp": lambda: _encoded(img, "WEBP"),
        "gray": lambda: _encoded(img.convert("L"), "PNG"), "bilevel": lambda: _encoded(img.convert("1"), "PNG"),
        "palette": lambda: _encoded(img.convert("P"), "PNG"), "rgba": lambda: _encoded(img.convert("RGBA"), "PNG"),
        "la": lambda: _encoded(img.convert("LA"), "PNG"), "cmyk": lambda: _encoded(img.convert("CMYK"), "JPEG"),
        "16bit": lambda: _encoded(Image.fromarray(photo[..., 0].astype(np.uint16) * 257), "PNG"),
        "float": lambda: _encoded(Image.fromarray(photo[..., 0].astype(np.float32) / 255), "TIFF"),
        "int32": lambda: _encoded(Image.fromarray(photo[..., 0].astype(np.int32) - 100), "TIFF"),
        "1x1": lambda: _encoded(Image.new("RGB", (1, 1)), "PNG"),
    }
    name = list(variants)[int(rng.integers(0, len(variants)))]
    data = variants[name]()
    if rng.random() < 0.5:
        data = mutate_bytes(data, rng)
    path = work / f"img.{ 'jpg' if name in ('jpeg', 'cmyk') else name if name in ('bmp', 'tiff', 'webp') else 'png'}"
    path.write_bytes(data)
    return lambda: read_image_with_info(path)


def case_label(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """A prediction / ground-truth folder pair with one broken label map -> `read_label` and `evaluate_folder`."""
    from nightseg.core.io import read_label
    from nightseg.evaluation.folder_eval import evaluate_folder

    good = np.random.default_rng(1).integers(0, 19, (24, 40), dtype=np.uint8)
    kind = int(rng.integers(0, 9))
    if kind == 0:  # wrong ids (beyond the classes, not 255)
        bad = good.copy()
        bad[rng.integers(0, 24, 5), rng.integers(0, 40, 5)] = rng.integers(19, 255, 5)
        data = _png(bad)
    elif kind == 1:  # wrong size
        data = _png(np.resize(good, (int(rng.integers(1, 50)), int(rng.integers(1, 50)))))
    elif kind == 2:  # 16-bit, sometimes with ids above 255
        wide = good.astype(np.uint16) + (300 if rng.random() < 0.5 else 0)
        data = _encoded(Image.fromarray(wide), "PNG")
    elif kind == 3:  # palette
        data = _png(good, "P")
    elif kind == 4:  # alpha
        data = _encoded(Image.fromarray(good).convert("LA" if rng.random() < 0.5 else "RGBA"), "PNG")
    elif kind == 5:  # a colour visualisation instead of ids
        from nightseg.core.classes import colorize

        data = _png(colorize(good))
    elif kind == 6:  # float / 32-bit
        data = _encoded(Image.fromarray(good.astype(np.float32 if rng.random() < 0.5 else np.int32)), "TIFF")
    else:
        data = mutate_bytes(_png(good), rng)
    pred, gt = work / "pred", work / "gt"
    pred.mkdir()
    gt.mkdir()
    (pred / "a.png").write_bytes(_png(good))
    broken = (gt if rng.random() < 0.5 else pred) / ("a.tiff" if kind == 6 else "a.png")
    if broken.parent == gt:
        (pred / "a.png").write_bytes(_png(good))
    else:
        (gt / "a.png").write_bytes(_png(good))
        (pred / "a.png").unlink()
    broken.write_bytes(data)

    def run() -> Any:
        with contextlib.suppress(UserError):
            read_label(broken)
        return evaluate_folder(pred, gt, workers=1)
    return run


def case_dataset(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """A synthetic dataset tree with one file deleted, corrupted, resized, recoloured or replaced -> `data check`
    and loading every sample."""
    from nightseg.data import build_dataset
    from nightseg.data.check import check_dataset

    layouts = {"cityscapes": "train", "dark_zurich": "val", "nightcity": "val", "dark_zurich_pairs": "train"}
    name = list(layouts)[int(rng.integers(0, len(layouts)))]
    folder = {"nightcity": "NightCity"}.get(name, name.removesuffix("_pairs"))
    root = work / folder
    shutil.copytree(seeds.synthetic() / folder, root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    victim = files[int(rng.integers(0, len(files)))]
    kind = int(rng.integers(0, 6))
    if kind == 0:
        victim.unlink()
    elif kind == 1:
        victim.write_bytes(mutate_bytes(victim.read_bytes(), rng))
    elif kind == 2 and victim.suffix == ".png":  # another size
        victim.write_bytes(_png(np.zeros((int(rng.integers(1, 40)), int(rng.integers(1, 40))), dtype=np.uint8)))
    elif kind == 3 and victim.suffix == ".png":  # a colour image where ids are expected (or the reverse)
        victim.write_bytes(_png(np.random.default_rng(2).integers(0, 255, (64, 128, 3), dtype=np.uint8)))
    elif kind == 4:  # a folder where a file is expected
        victim.unlink()
        victim.mkdir()
    else:  # a junk file next to the data
        (victim.parent / f"junk{rng.integers(0, 9)}.png").write_bytes(rng.bytes(50))

    def run() -> Any:
        check_dataset(name, root, layouts[name], workers=1)
        dataset = build_dataset(name, root, layouts[name])
        return [dataset[i] for i in range(len(dataset))]
    return run


def case_config(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """A packaged CPU recipe with a line dropped, a value replaced by junk, a key added or bytes broken, and random
    ``key=value`` overrides -> `load_config`."""
    from nightseg.core.config import load_config

    sources = sorted((REPO / "src" / "nightseg" / "configs" / "cpu").glob("*.yaml"))
    source = sources[int(rng.integers(0, len(sources)))]
    text = source.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    kind = int(rng.integers(0, 5))
    if kind == 0 and lines:
        lines.pop(int(rng.integers(0, len(lines))))
        text = "\n".join(lines)
    elif kind == 1 and lines:
        i = int(rng.integers(0, len(lines)))
        key = lines[i].split(":", 1)[0]
        lines[i] = f"{key}: {json.dumps(JUNK_VALUES[int(rng.integers(0, len(JUNK_VALUES)))])}"
        text = "\n".join(lines)
    elif kind == 2 and lines:
        i = int(rng.integers(0, len(lines)))
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines.insert(i, f"{indent}unknown_key_{rng.integers(0, 99)}: 1")
        text = "\n".join(lines)
    elif kind == 3:
        text = mutate_bytes(text.encode(), rng).decode("latin-1")
    path = work / source.name
    if kind == 4:
        path.write_bytes(mutate_bytes(text.encode(), rng))
    else:
        path.write_text(text, encoding="latin-1" if kind == 3 else "utf-8")
    if "base:" in text:  # a recipe with a base needs its base beside it
        for other in sources:
            if other.name != source.name:
                shutil.copy(other, work / other.name)
    keys = ["train.max_steps", "data.batch_size", "optim.lr", "model.name", "data.source.crop", "method.name",
            "seed", "train.devices", "data.val", "nothing.here", "optim", "train..x", ""]
    overrides = []
    for _ in range(int(rng.integers(0, 3))):
        value = JUNK_VALUES[int(rng.integers(0, len(JUNK_VALUES)))]
        overrides.append(f"{keys[int(rng.integers(0, len(keys)))]}={yaml.safe_dump(value).strip()}"
                         if rng.random() < 0.8 else rng.bytes(8).decode("latin-1"))
    return lambda: load_config(path, overrides)


def case_checkpoint(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """A checkpoint whose JSON metadata has a key dropped / junked / its bytes broken, or whose tensors file is
    byte-mutated (with or without its digest) -> `Predictor.from_checkpoint` and one prediction."""
    from nightseg.inference import Predictor

    src = seeds.checkpoint()
    path = work / "m.safetensors"
    shutil.copy(src, path)
    meta = json.loads(src.with_suffix(".json").read_text())
    kind = int(rng.integers(0, 5))
    if kind == 0:  # drop a key (top level or inside "model")
        target = meta["model"] if rng.random() < 0.5 else meta
        target.pop(sorted(target)[int(rng.integers(0, len(target)))])
    elif kind == 1:  # junk value
        target = meta["model"] if rng.random() < 0.5 else meta
        target[sorted(target)[int(rng.integers(0, len(target)))]] = JUNK_VALUES[int(rng.integers(0, len(JUNK_VALUES)))]
    elif kind == 2:
        meta = JUNK_VALUES[int(rng.integers(0, len(JUNK_VALUES)))]
    text = json.dumps(meta)
    if kind == 3:
        text = mutate_bytes(text.encode(), rng).decode("latin-1")
    if kind == 4:
        path.write_bytes(mutate_bytes(path.read_bytes(), rng))
        if rng.random() < 0.5 and isinstance(meta, dict):
            meta.pop("sha256", None)  # let the safetensors parser meet the broken bytes
            text = json.dumps(meta)
    path.with_suffix(".json").write_text(text, encoding="latin-1")
    image = seeds.photo()
    return lambda: Predictor.from_checkpoint(path, device="cpu").predict(image)


def case_onnx(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """A byte-mutated `nightseg export` ONNX file -> `Predictor.from_checkpoint` and one prediction."""
    from nightseg.inference import Predictor

    path = work / "m.onnx"
    path.write_bytes(mutate_bytes(seeds.onnx().read_bytes(), rng))
    image = seeds.photo()
    return lambda: Predictor.from_checkpoint(path, device="cpu").predict(image)


def case_video(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """A byte-mutated MP4 -> `open_video` and reading every frame."""
    from nightseg.inference.video import open_video, read_frames

    path = work / "v.mp4"
    path.write_bytes(mutate_bytes(seeds.video().read_bytes(), rng))

    def run() -> Any:
        cap, _ = open_video(path)
        cap.release()
        return sum(1 for _ in read_frames(path))
    return run


def case_pairs_csv(seeds: Seeds, rng: np.random.Generator, work: Path) -> Callable[[], Any]:
    """Dark Zurich's night->day pair CSV with rows dropped, swapped, junked or bytes broken -> the pairs dataset."""
    from nightseg.data import build_dataset

    root = work / "dark_zurich"
    shutil.copytree(seeds.synthetic() / "dark_zurich", root)
    csv_path = next(root.glob("*pair*.csv"))
    rows = csv_path.read_text().splitlines()
    kind = int(rng.integers(0, 6))
    if kind == 0:
        rows = []
    elif kind == 1:
        rows = [",".join(reversed(r.split(","))) for r in rows]
    elif kind == 2:
        rows.insert(int(rng.integers(0, len(rows) + 1)), ",".join(["x"] * int(rng.integers(0, 4))))
    elif kind == 3:
        rows = [r.replace("train", "../../etc") for r in rows]
    elif kind == 4:
        rows.append('"unclosed,' + rng.bytes(6).hex())
    text = "\n".join(rows)
    if kind == 5:
        csv_path.write_bytes(mutate_bytes(text.encode(), rng))
    else:
        csv_path.write_text(text)

    def run() -> Any:
        dataset = build_dataset("dark_zurich_pairs", root, "train")
        return [dataset[i] for i in range(len(dataset))]
    return run


READERS: dict[str, Callable[[Seeds, np.random.Generator, Path], Callable[[], Any]]] = {
    "images": case_image, "label maps": case_label, "dataset trees": case_dataset,
    "configs + overrides": case_config, "checkpoints + metadata": case_checkpoint, "ONNX files": case_onnx,
    "videos": case_video, "pair CSVs": case_pairs_csv,
}


KNOWN_OPEN: dict[str, tuple[str, str]] = {
    # reader -> (exception type, file it is raised from): found by this fuzzer in code owned elsewhere, reported
    # and counted as a documented skip until fixed there (docs/benchmarks.md, "Fuzzing the readers")
}


@dataclass
class FuzzResult:
    """What `fuzz` saw for one reader: inputs tried, accepted, refused in one line, documented skips (`KNOWN_OPEN`)
    and failures."""

    reader: str
    tried: int = 0
    accepted: int = 0
    refused: int = 0
    known: int = 0
    failures: list[str] = field(default_factory=list)


def fuzz(reader: str, n: int, seed: int, seeds: Seeds, work: Path) -> FuzzResult:
    """Feed `n` mutated inputs to `reader` (a key of `READERS`); return the counts and every failure."""
    result = FuzzResult(reader)
    for i in range(n):
        rng = np.random.default_rng([seed, i, sum(map(ord, reader))])
        case_dir = work / f"{reader.split()[0]}_{i}"
        shutil.rmtree(case_dir, ignore_errors=True)
        case_dir.mkdir(parents=True)
        result.tried += 1
        try:
            READERS[reader](seeds, rng, case_dir)()
            result.accepted += 1
        except UserError as exc:
            if "\n" in str(exc) or not str(exc).strip():
                result.failures.append(f"case {i}: UserError not one line: {str(exc)!r}")
            else:
                result.refused += 1
        except Exception as exc:
            text = traceback.format_exc()
            known = KNOWN_OPEN.get(reader)
            if known and type(exc).__name__ == known[0] and known[1] in text:
                result.known += 1
            else:
                result.failures.append(f"case {i}: {traceback.format_exc(limit=-3)}")
        finally:
            shutil.rmtree(case_dir, ignore_errors=True)
    return result

"""Submission packers: Dark Zurich test (against the real 151-name list), ACDC test, Cityscapes test."""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nightseg.classes import TRAIN_ID_TO_LABEL_ID
from nightseg.errors import UserError
from nightseg.evaluation import submission
from nightseg.evaluation.submission import expected_images, pack_submission, verify_archive
from nightseg.io import write_png

SMALL = (18, 32)


@pytest.fixture
def small(monkeypatch):
    """Shrink the benchmarks' image size (the real 1920x1080 is checked separately) and drop fixed counts."""
    specs = {k: dataclasses.replace(v, size=SMALL) for k, v in submission.BENCHMARK_SPECS.items()}
    specs["cityscapes"] = dataclasses.replace(specs["cityscapes"], count=None)
    monkeypatch.setattr(submission, "BENCHMARK_SPECS", specs)


def _zurich_list(realdata: Path) -> Path:
    return realdata / "dataset_lists" / "zurich_test.txt"


def _predictions(folder: Path, names: list[str], size=SMALL, kinds=("labels", "invalid", "confidence")) -> None:
    """Write what `nightseg predict --confidence` writes for each image name."""
    for i, name in enumerate(names):
        stem = Path(name).name[: -len(".png")]
        labels = ((np.arange(size[0] * size[1]).reshape(size) + i) % 19).astype(np.uint8)
        conf = ((np.arange(size[0] * size[1]).reshape(size) * 997 + i) % 65536).astype(np.uint16)
        if "labels" in kinds:
            write_png(folder / f"{stem}_labelTrainIds.png", labels)
        if "invalid" in kinds:
            write_png(folder / f"{stem}_labelTrainIds_invalid.png", np.where(conf < 20000, 255, labels).astype(np.uint8))
        if "confidence" in kinds:
            write_png(folder / f"{stem}_confidence.png", conf)


def _read(zf: zipfile.ZipFile, name: str) -> tuple[np.ndarray, str]:
    with Image.open(io.BytesIO(zf.read(name))) as img:
        return np.asarray(img), img.mode


def test_dark_zurich_real_test_list(realdata, small, tmp_path):
    images = expected_images("dark_zurich", list_file=_zurich_list(realdata))
    assert len(images) == 151 and images[0] == "test/night/GOPR0364/GOPR0364_frame_000001_rgb_anon.png"
    pred = tmp_path / "pred"
    _predictions(pred, images)
    write_png(pred / "GOPR9999_frame_000001_rgb_anon_labelTrainIds.png", np.zeros(SMALL, np.uint8))  # not a test image
    out = tmp_path / "dz.zip"
    info = pack_submission("dark_zurich", pred, out, images, progress=False)
    assert info["images"] == 151 and info["entries"] == 453 and info["ignored"] == 1
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
        basenames = sorted(Path(i).name for i in images)
        for folder in ("labelTrainIds", "labelTrainIds_invalid", "confidence"):
            assert sorted(n.split("/", 1)[1] for n in names if n.startswith(folder + "/")) == basenames
        labels, mode = _read(zf, "labelTrainIds/GOPR0364_frame_000001_rgb_anon.png")
        assert mode == "L" and labels.shape == SMALL and labels.max() <= 18
        invalid, mode = _read(zf, "labelTrainIds_invalid/GOPR0364_frame_000001_rgb_anon.png")
        assert mode == "L" and (invalid == 255).any()
        conf, mode = _read(zf, "confidence/GOPR0364_frame_000001_rgb_anon.png")
        assert mode.startswith("I;16") and conf.dtype == np.uint16
        expected = ((np.arange(SMALL[0] * SMALL[1]).reshape(SMALL) * 997) % 65536).astype(np.uint16)
        np.testing.assert_array_equal(conf, expected)  # values survive unchanged
        np.testing.assert_array_equal(labels, (np.arange(SMALL[0] * SMALL[1]).reshape(SMALL) % 19))


def test_dark_zurich_refuses_broken_predictions(realdata, small, tmp_path):
    images = expected_images("dark_zurich", list_file=_zurich_list(realdata))
    pred = tmp_path / "pred"
    _predictions(pred, images)
    out = tmp_path / "dz.zip"
    victim = Path(images[10]).name[: -len(".png")]
    cases = [
        (lambda: (pred / f"{victim}_confidence.png").unlink(), "lack predictions"),
        (lambda: write_png(pred / f"{victim}_confidence.png", np.zeros(SMALL, np.uint8)), "16-bit"),
        (lambda: write_png(pred / f"{victim}_labelTrainIds.png", np.full(SMALL, 255, np.uint8)), "255 belongs"),
        (lambda: write_png(pred / f"{victim}_labelTrainIds.png", np.zeros((9, 16), np.uint8)), "is 16x9"),
        (lambda: (pred / f"{victim}_labelTrainIds.png").write_bytes(b"garbage"), "cannot decode"),
        (lambda: write_png(pred / f"{victim}_labelTrainIds_invalid.png", np.full(SMALL, 18, np.uint8)), "differ"),
    ]
    for damage, message in cases:
        _predictions(pred, images[10:11])  # repair the victim (same content as the full set's file)
        damage()
        with pytest.raises(UserError, match=message) as err:
            pack_submission("dark_zurich", pred, out, images, progress=False)
        assert victim in str(err.value) or "lack" in message
        assert not out.exists() and not list(tmp_path.glob(".dz.zip*"))  # nothing, not even a temp file
    with pytest.raises(UserError, match="151 images but 150"):
        pack_submission("dark_zurich", pred, out, images[:150], progress=False)


def test_dark_zurich_fill_uncertainty(realdata, small, tmp_path):
    images = expected_images("dark_zurich", list_file=_zurich_list(realdata))
    pred = tmp_path / "pred"
    _predictions(pred, images, kinds=("labels",))
    with pytest.raises(UserError, match="--confidence"):
        pack_submission("dark_zurich", pred, tmp_path / "a.zip", images, progress=False)
    pack_submission("dark_zurich", pred, tmp_path / "a.zip", images, fill_uncertainty=True, progress=False)
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        conf, _ = _read(zf, "confidence/GOPR0364_frame_000001_rgb_anon.png")
        labels, _ = _read(zf, "labelTrainIds/GOPR0364_frame_000001_rgb_anon.png")
        invalid, _ = _read(zf, "labelTrainIds_invalid/GOPR0364_frame_000001_rgb_anon.png")
    assert (conf == 65535).all() and np.array_equal(invalid, labels)


def test_dark_zurich_cli_checks_the_real_size(realdata, tmp_path, run_cli):
    images = expected_images("dark_zurich", list_file=_zurich_list(realdata))
    pred = tmp_path / "pred"
    _predictions(pred, images[:1], kinds=("labels",))  # 32x18, not 1920x1080
    r = run_cli("submit", "dark_zurich", pred, "--out", tmp_path / "s.zip", "--list", _zurich_list(realdata),
                "--fill-uncertainty")
    assert r.code == 2 and "150 of 151" in r.err and "GOPR0364_frame_000021" in r.err
    _predictions(pred, images, kinds=("labels",))
    r = run_cli("submit", "dark_zurich", pred, "--out", tmp_path / "s.zip", "--list", _zurich_list(realdata),
                "--fill-uncertainty")
    assert r.code == 2 and "1920x1080" in r.err and "GOPR0364_frame_000001" in r.err
    assert not (tmp_path / "s.zip").exists()
    r = run_cli("submit", "dark_zurich", pred, "--out", tmp_path / "s.zip")
    assert r.code == 2 and "--list" in r.err


def test_acdc_from_dataset_root(small, tmp_path, run_cli):
    root = tmp_path / "acdc"
    names = []
    for cond, seq in (("night", "GOPR0351"), ("fog", "GOPR0475")):
        for frame in (1, 2):
            rel = f"rgb_anon/{cond}/test/{seq}/{seq}_frame_{frame:06d}_rgb_anon.png"
            write_png(root / rel, np.zeros((*SMALL, 3), np.uint8))
            names.append(rel)
    write_png(root / "rgb_anon/night/val/GOPR0001/GOPR0001_frame_000001_rgb_anon.png", np.zeros((*SMALL, 3), np.uint8))
    images = expected_images("acdc", root=root)
    assert sorted(images) == sorted(n.removeprefix("rgb_anon/") for n in names)
    pred = tmp_path / "pred"
    _predictions(pred, images)
    r = run_cli("submit", "acdc", pred, "--out", tmp_path / "acdc.zip", "--root", root)
    assert r.code == 0, r.err
    with zipfile.ZipFile(tmp_path / "acdc.zip") as zf:
        assert "labelTrainIds/night/test/GOPR0351/GOPR0351_frame_000001_rgb_anon.png" in zf.namelist()
        assert "confidence/fog/test/GOPR0475/GOPR0475_frame_000002_rgb_anon.png" in zf.namelist()
        assert len(zf.namelist()) == 12
    r = run_cli("submit", "acdc", pred, "--out", tmp_path / "std.zip", "--root", root, "--no-uncertainty")
    assert r.code == 0
    with zipfile.ZipFile(tmp_path / "std.zip") as zf:
        assert all(n.startswith("labelTrainIds/") for n in zf.namelist()) and len(zf.namelist()) == 4


def test_cityscapes_labelids_named_for_cityscapesscripts(small, tmp_path):
    images = [f"{c}/{c}_{s:06d}_000019_leftImg8bit.png" for c, s in (("berlin", 0), ("berlin", 1), ("bonn", 5))]
    listing = tmp_path / "test.txt"
    listing.write_text("\n".join(images) + "\n")
    assert expected_images("cityscapes", list_file=listing) == images
    pred = tmp_path / "pred"
    _predictions(pred, images, kinds=("labels",))
    train = np.zeros(SMALL, np.uint8)
    train[0, :5] = [0, 13, 18, 255, 7]
    write_png(pred / "bonn_000005_000019_leftImg8bit_labelTrainIds.png", train)
    out = tmp_path / "cs.zip"
    pack_submission("cityscapes", pred, out, images, progress=False)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert sorted(names) == sorted(Path(i).name for i in images)
        label_ids, mode = _read(zf, "bonn_000005_000019_leftImg8bit.png")
    assert mode == "L" and list(label_ids[0, :5]) == [7, 26, 33, 0, TRAIN_ID_TO_LABEL_ID[7]]
    # cityscapesscripts' getPrediction pattern finds exactly one file per ground-truth image
    for image in images:
        city, seq, frame = Path(image).name.split("_")[:3]
        assert len(fnmatch.filter(names, f"{city}_{seq}_{frame}*.png")) == 1
    verify_archive(out, "cityscapes", images)
    with pytest.raises(UserError, match="missing"):
        verify_archive(out, "cityscapes", [*images, "bonn/bonn_000006_000019_leftImg8bit.png"])
    bad = tmp_path / "bad.txt"
    bad.write_text("berlin/berlin_000000_000019_gtFine_labelIds.png\n")
    with pytest.raises(UserError, match="not a cityscapes test image"):
        expected_images("cityscapes", list_file=bad)

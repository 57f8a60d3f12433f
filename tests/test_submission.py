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

from nightseg.core.classes import TRAIN_ID_TO_LABEL_ID
from nightseg.core.errors import UserError
from nightseg.core.io import write_png
from nightseg.evaluation import submission
from nightseg.evaluation.folder_eval import scene_stem
from nightseg.evaluation.submission import expected_images, pack_submission, verify_archive

SMALL = (18, 32)
ACDC_SMALL_COUNT = 2  # test images per ACDC condition under the `small` fixture (the real 500 is checked separately)


def _shrink(monkeypatch, size=SMALL, **changes) -> None:
    """Give every benchmark the image `size`, then apply ``{benchmark: {field: value}}`` `changes`."""
    specs = {k: dataclasses.replace(v, size=size, **changes.get(k, {})) for k, v in submission.BENCHMARK_SPECS.items()}
    monkeypatch.setattr(submission, "BENCHMARK_SPECS", specs)


@pytest.fixture
def small(monkeypatch):
    """Shrink the image size (the real 1920x1080 is checked separately), drop Cityscapes' 1525-image count
    and set ACDC's per-condition count to ACDC_SMALL_COUNT."""
    _shrink(monkeypatch, cityscapes={"count": None}, acdc={"condition_count": ACDC_SMALL_COUNT})


@pytest.fixture
def small_sizes(monkeypatch):
    """Shrink the image size only: the real counts (Dark Zurich 151, Cityscapes 1525, ACDC 500 each) stay."""
    _shrink(monkeypatch)


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
    assert r.code == 2 and "not rain, snow" in r.err and "--conditions fog night" in r.err and str(root) in r.err
    assert not (tmp_path / "acdc.zip").exists()
    r = run_cli("submit", "acdc", pred, "--out", tmp_path / "acdc.zip", "--root", root, "--conditions", "fog", "night")
    assert r.code == 0, r.err
    assert "conditions fog, night only" in r.out
    with zipfile.ZipFile(tmp_path / "acdc.zip") as zf:
        assert "labelTrainIds/night/test/GOPR0351/GOPR0351_frame_000001_rgb_anon.png" in zf.namelist()
        assert "confidence/fog/test/GOPR0475/GOPR0475_frame_000002_rgb_anon.png" in zf.namelist()
        assert len(zf.namelist()) == 12
    r = run_cli("submit", "acdc", pred, "--out", tmp_path / "std.zip", "--root", root, "--no-uncertainty",
                "--conditions", "night", "fog")
    assert r.code == 0, r.err
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


# --------------------------------------------------------------------------------------------- ACDC counts
def _acdc_names(counts: dict[str, int]) -> list[str]:
    """Return ACDC test image paths (as `expected_images` gives them): `counts[cond]` per condition."""
    seq = {c: 1000 * (k + 1) for k, c in enumerate(("fog", "night", "rain", "snow", "dusk"))}  # unique stems
    return [f"{cond}/test/GOPR{seq[cond] + i // 50:04d}/GOPR{seq[cond] + i // 50:04d}_frame_{i:06d}_rgb_anon.png"
            for cond, n in counts.items() for i in range(n)]


def _acdc_root(root: Path, counts: dict[str, int]) -> Path:
    for name in _acdc_names(counts):
        write_png(root / "rgb_anon" / name, np.zeros((*SMALL, 3), np.uint8))
    return root


def test_acdc_enforces_500_test_images_per_condition(small_sizes, tmp_path):
    full = {"fog": 500, "night": 500, "rain": 500, "snow": 500}
    pred = tmp_path / "pred"
    pred.mkdir()
    out = tmp_path / "acdc.zip"
    # the right count passes the count check and stops at the (absent) predictions
    with pytest.raises(UserError, match="2000 acdc test images lack predictions"):
        pack_submission("acdc", pred, out, _acdc_names(full), progress=False)
    with pytest.raises(UserError, match=r"^test\.txt: acdc night test has 500 images but 499 were listed"):
        pack_submission("acdc", pred, out, _acdc_names(full | {"night": 499}), progress=False, source="test.txt")
    with pytest.raises(UserError, match="acdc snow test has 500 images but 501"):
        pack_submission("acdc", pred, out, _acdc_names(full | {"snow": 501}), progress=False)
    # a missing condition folder is refused unless a subset is asked for by name
    with pytest.raises(UserError, match="cover fog, night, rain but not snow.*--conditions fog night rain"):
        pack_submission("acdc", pred, out, _acdc_names({"fog": 500, "night": 500, "rain": 500}), progress=False)
    with pytest.raises(UserError, match="500 acdc test images lack predictions"):  # night only: 500 checked
        pack_submission("acdc", pred, out, _acdc_names(full), conditions=["night"], progress=False)
    with pytest.raises(UserError, match="acdc night test has 500 images but 3"):
        pack_submission("acdc", pred, out, _acdc_names({"night": 3, "fog": 500}), conditions=["night"], progress=False)
    with pytest.raises(UserError, match="no acdc snow test images listed"):
        pack_submission("acdc", pred, out, _acdc_names({"night": 500}), conditions=["night", "snow"], progress=False)
    with pytest.raises(UserError, match="--conditions dusk: expected some of fog, night, rain, snow"):
        pack_submission("acdc", pred, out, _acdc_names(full), conditions=["dusk"], progress=False)
    with pytest.raises(UserError, match="not under a acdc condition folder"):
        pack_submission("acdc", pred, out, ["dusk/test/GOPR0001/GOPR0001_frame_000001_rgb_anon.png"], progress=False)
    with pytest.raises(UserError, match="only ACDC test sets have conditions"):
        pack_submission("cityscapes", pred, out, ["berlin/berlin_000000_000019_leftImg8bit.png"], conditions=["night"],
                        progress=False)
    assert not out.exists() and not list(tmp_path.glob(".acdc.zip*"))


def test_acdc_subset_packs_only_the_named_conditions(small, tmp_path, run_cli):
    root = _acdc_root(tmp_path / "acdc", {"night": ACDC_SMALL_COUNT, "fog": ACDC_SMALL_COUNT, "rain": 1})
    images = expected_images("acdc", root=root)
    pred = tmp_path / "pred"
    _predictions(pred, images)
    r = run_cli("submit", "acdc", pred, "--out", tmp_path / "n.zip", "--root", root, "--conditions", "night")
    assert r.code == 0, r.err
    assert "2 test images, 6 files" in r.out and "3 prediction(s) of other images not packed" in r.out
    with zipfile.ZipFile(tmp_path / "n.zip") as zf:
        names = sorted(zf.namelist())
    assert len(names) == 6 and all(n.split("/")[1] == "night" for n in names)
    # rain has 1 of its (shrunk) 2 test images: asking for it is refused, and without --conditions too
    for extra in (["--conditions", "night", "rain"], []):
        r = run_cli("submit", "acdc", pred, "--out", tmp_path / "r.zip", "--root", root, *extra)
        assert r.code == 2 and str(root) in r.err and len(r.err.strip().splitlines()) == 1
    assert "rain test has 2 images but 1" in run_cli("submit", "acdc", pred, "--out", tmp_path / "r.zip", "--root", root,
                                                     "--conditions", "rain").err
    assert not (tmp_path / "r.zip").exists()
    # all four complete: packed without --conditions
    full = _acdc_root(tmp_path / "full", dict.fromkeys(("fog", "night", "rain", "snow"), ACDC_SMALL_COUNT))
    _predictions(pred, expected_images("acdc", root=full))
    r = run_cli("submit", "acdc", pred, "--out", tmp_path / "all.zip", "--root", full)
    assert r.code == 0, r.err
    with zipfile.ZipFile(tmp_path / "all.zip") as zf:
        assert len(zf.namelist()) == 3 * 4 * ACDC_SMALL_COUNT
        assert {n.split("/")[1] for n in zf.namelist()} == {"fog", "night", "rain", "snow"}


# --------------------------------------------------------------------------------------------- negative tests
def _damage_cases(pred: Path, stem: str, labels_message: str, mode_message: str):
    """(damage, message) pairs shared by the ACDC and Cityscapes refusal tests."""
    labels = pred / f"{stem}_labelTrainIds.png"
    return [
        (lambda: labels.unlink(), "lack predictions"),
        (lambda: write_png(labels, np.zeros((9, 16), np.uint8)), "is 16x9, the benchmark expects 32x18"),
        (lambda: write_png(labels, np.zeros((*SMALL, 3), np.uint8)), mode_message),  # RGB, not 8-bit single-channel
        (lambda: write_png(labels, np.zeros(SMALL, np.uint16)), mode_message),  # 16-bit labels
        (lambda: write_png(labels, np.full(SMALL, 19, np.uint8)), labels_message),  # trainId 19 does not exist
        (lambda: labels.write_bytes(b"\x89PNG broken"), "cannot decode"),
    ]


def _assert_refused(pred: Path, out: Path, benchmark: str, images: list[str], cases, repair, victim: str, **kw):
    for damage, message in cases:
        repair()
        pack_submission(benchmark, pred, out, images, progress=False, **kw)  # the repaired set packs
        out.unlink()
        damage()
        with pytest.raises(UserError, match=message) as err:
            pack_submission(benchmark, pred, out, images, progress=False, **kw)
        assert scene_stem(victim)[0] in str(err.value) and "\n" not in str(err.value)  # names the image, one line
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # no archive, no temp file


def test_acdc_refuses_broken_predictions(small, tmp_path):
    images = _acdc_names(dict.fromkeys(("fog", "night", "rain", "snow"), ACDC_SMALL_COUNT))
    pred = tmp_path / "pred"
    _predictions(pred, images)
    victim = Path(images[5]).name[: -len(".png")]
    cases = _damage_cases(pred, victim, "contains values 19; labelTrainIds", "must be an 8-bit single-channel PNG")
    cases += [
        (lambda: write_png(pred / f"{victim}_confidence.png", np.zeros(SMALL, np.uint8)), "16-bit"),
        (lambda: write_png(pred / f"{victim}_labelTrainIds_invalid.png", np.full(SMALL, 30, np.uint8)),
         "contains values 30; labelTrainIds_invalid allows only 0-18, 255"),
        (lambda: (pred / f"{victim}_confidence.png").unlink(), "lack predictions.*--confidence"),
    ]
    _assert_refused(pred, tmp_path / "acdc.zip", "acdc", images, cases, lambda: _predictions(pred, images[5:6]), victim)
    # the standard track (labelTrainIds only) does not need confidence maps, but still checks the labels
    _predictions(pred, images[5:6], kinds=("labels",))  # the last case removed the victim's confidence map
    pack_submission("acdc", pred, tmp_path / "std.zip", images, uncertainty=False, progress=False)
    write_png(pred / f"{victim}_labelTrainIds.png", np.full(SMALL, 255, np.uint8))
    with pytest.raises(UserError, match="255 belongs in labelTrainIds_invalid"):
        pack_submission("acdc", pred, tmp_path / "std2.zip", images, uncertainty=False, progress=False)
    assert not (tmp_path / "std2.zip").exists()


def test_cityscapes_refuses_broken_predictions(small, tmp_path):
    images = [f"{c}/{c}_{s:06d}_000019_leftImg8bit.png" for c, s in (("berlin", 0), ("berlin", 1), ("bonn", 5))]
    pred = tmp_path / "pred"
    victim = "berlin_000001_000019_leftImg8bit"
    cases = _damage_cases(pred, victim, "contains values 19; a trainId prediction allows only 0-18, 255",
                          "must be an 8-bit single-channel PNG")
    label_ids = pred / f"{victim}_labelIds.png"

    def as_label_ids(values: np.ndarray) -> None:  # a labelIds prediction instead of trainIds
        (pred / f"{victim}_labelTrainIds.png").unlink()
        write_png(label_ids, values)

    cases += [
        (lambda: as_label_ids(np.full(SMALL, 34, np.uint8)), "contains values 34; a Cityscapes labelIds prediction"),
        (lambda: as_label_ids(np.zeros((*SMALL, 3), np.uint8)), "labelIds prediction must be an 8-bit"),
    ]

    def repair() -> None:
        label_ids.unlink(missing_ok=True)
        _predictions(pred, images, kinds=("labels",))

    _assert_refused(pred, tmp_path / "cs.zip", "cityscapes", images, cases, repair, victim)


def test_cityscapes_enforces_1525_test_images(small_sizes, tmp_path, run_cli):
    names = [f"city{i // 100}/city{i // 100}_{i:06d}_000019_leftImg8bit.png" for i in range(1526)]
    pred = tmp_path / "pred"
    pred.mkdir()
    out = tmp_path / "cs.zip"
    for n in (1524, 1526):
        with pytest.raises(UserError, match=f"cityscapes test has 1525 images but {n} were listed"):
            pack_submission("cityscapes", pred, out, names[:n], progress=False)
    with pytest.raises(UserError, match="1525 of 1525 cityscapes test images lack predictions"):
        pack_submission("cityscapes", pred, out, names[:1525], progress=False)  # count accepted
    listing = tmp_path / "test.txt"
    listing.write_text("\n".join(names[:1524]) + "\n")
    r = run_cli("submit", "cityscapes", pred, "--out", out, "--list", listing)
    assert r.code == 2 and r.err.strip() == f"error: {listing}: cityscapes test has 1525 images but 1524 were listed; " \
                                           "check --list/--root"
    assert not out.exists() and not list(tmp_path.glob(".cs.zip*"))

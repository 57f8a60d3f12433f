"""`nightseg eval`: file matching, Cityscapes parity, exposure scores, and every bad-input error."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nightseg.core.classes import CLASS_NAMES, LABEL_ID_TO_TRAIN_ID, VALID_LABEL_IDS
from nightseg.core.errors import UserError
from nightseg.core.io import write_png
from nightseg.evaluation.exposure import ExposureConfusion, exposure_scores
from nightseg.evaluation.folder_eval import scene_stem
from nightseg.evaluation.metrics import ConfusionMatrix, segmentation_scores

EVAL_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
VOID_LABEL_IDS = sorted(set(VALID_LABEL_IDS) - set(EVAL_LABEL_IDS))  # 0-6, 9, 10, 14-16, 18, 29, 30


def _structured_label_ids(rng: np.random.Generator, h: int = 48, w: int = 96) -> np.ndarray:
    """Blocks of labelIds (mostly eval classes, some void), with a few void specks."""
    ids = np.array(EVAL_LABEL_IDS + VOID_LABEL_IDS)
    p = np.r_[np.full(len(EVAL_LABEL_IDS), 3.0), np.ones(len(VOID_LABEL_IDS))]
    blocks = rng.choice(ids, size=(h // 8, w // 8), p=p / p.sum())
    label = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
    specks = rng.random(label.shape) < 0.03
    label[specks] = rng.choice(VOID_LABEL_IDS, size=int(specks.sum()))
    return label


def _predict(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: mostly right, shifted boundaries, wrong blobs, some void predictions."""
    pred = np.roll(gt, (2, 3), axis=(0, 1)).copy()
    for _ in range(4):
        y, x = rng.integers(0, gt.shape[0] - 10), rng.integers(0, gt.shape[1] - 10)
        pred[y : y + 10, x : x + 14] = rng.choice([*EVAL_LABEL_IDS, 0, 4, 9, 29])
    noise = rng.random(gt.shape) < 0.05
    pred[noise] = rng.choice(sorted(VALID_LABEL_IDS), size=int(noise.sum()))
    return pred


def _image(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A dark night-like RGB image with a few bright lights, covering all exposure bins."""
    base = rng.gamma(1.5, 25, size=(*shape, 3)).clip(0, 255)
    lights = rng.random(shape) < 0.05
    base[lights] = 250
    return base.astype(np.uint8)


@pytest.fixture
def cityscapes(tmp_path: Path) -> dict[str, Path]:
    """3 scenes in Cityscapes layout: gtFine/<city>/ with labelIds + labelTrainIds + color, predictions
    (labelIds and trainIds) named like the input images, and the images."""
    rng = np.random.default_rng(7)
    root = {k: tmp_path / k for k in ("gt", "pred_label", "pred_train", "images")}
    for i, city in enumerate(["frankfurt", "frankfurt", "lindau"]):
        stem = f"{city}_000000_{i:06d}"
        gt = _structured_label_ids(rng)
        pred = _predict(gt, rng)
        write_png(root["gt"] / city / f"{stem}_gtFine_labelIds.png", gt)
        write_png(root["gt"] / city / f"{stem}_gtFine_labelTrainIds.png", LABEL_ID_TO_TRAIN_ID[gt])
        write_png(root["gt"] / city / f"{stem}_gtFine_color.png", np.stack([gt * 3, gt, gt * 7], axis=-1))
        write_png(root["pred_label"] / f"{stem}_leftImg8bit.png", pred)
        write_png(root["pred_train"] / city / f"{stem}_leftImg8bit_pred.png", LABEL_ID_TO_TRAIN_ID[pred])
        write_png(root["images"] / city / f"{stem}_leftImg8bit.png", _image(rng, gt.shape))
    return root


def _cityscapes_reference(pred_files: list[Path], gt_files: list[Path], tmp_path: Path) -> dict:
    """Run cityscapesscripts' evalPixelLevelSemanticLabeling in-process (no instances, no JSON, quiet)."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    args = copy.copy(cs.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.quiet = True
    args.JSONOutput = False
    args.colorized = False
    args.bold = args.nocol = ""
    args.exportFile = str(tmp_path / "cityscapes_result.json")
    return cs.evaluateImgLists([str(p) for p in pred_files], [str(p) for p in gt_files], args)


def _assert_same_per_class_iou(ours: dict, ref: dict) -> int:
    """Assert our per-class IoU equals cityscapesscripts' to 1e-6 (None where it has NaN); return how many
    classes were compared."""
    compared = 0
    for name in CLASS_NAMES:
        theirs, mine = ref["classScores"][name], ours["per_class"][name]["iou"]
        if math.isnan(theirs):
            assert mine is None, name
        else:
            assert mine == pytest.approx(theirs, abs=1e-6), name
            compared += 1
    return compared


@pytest.mark.parametrize("pred_format", ["labelIds", "trainIds"])
def test_per_class_iou_equals_cityscapesscripts(cityscapes, tmp_path, run_cli, pred_format):
    gt_files = sorted(cityscapes["gt"].rglob("*_gtFine_labelIds.png"))
    pred_files = [cityscapes["pred_label"] / p.name.replace("_gtFine_labelIds", "_leftImg8bit") for p in gt_files]
    ref = _cityscapes_reference(pred_files, gt_files, tmp_path)
    pred_dir = cityscapes["pred_label"] if pred_format == "labelIds" else cityscapes["pred_train"]
    out = tmp_path / "ours.json"
    r = run_cli("eval", "--pred", pred_dir, "--gt", cityscapes["gt"], "--gt-format", "labelIds",
                "--pred-format", pred_format, "--json", out)
    assert r.code == 0, r.err
    ours = json.loads(out.read_text())
    assert ours["num_images"] == 3
    compared = _assert_same_per_class_iou(ours, ref)
    assert compared >= 15  # the synthetic scenes really exercise most classes
    assert 0.2 < ours["mIoU"] < 0.95  # neither trivial nor perfect
    assert ours["mIoU"] == pytest.approx(ref["averageScoreClasses"], abs=1e-6)
    assert "road" in r.out and "mIoU" in r.out


def test_per_class_iou_equals_cityscapesscripts_on_the_real_sample(realdata, tmp_path, run_cli):
    """The same parity on the real Cityscapes 128x256 labels, with predictions made by shifting them and
    painting wrong blobs (a realistic mix of boundary errors and confusions)."""
    from nightseg.core.io import read_label

    gt_file = realdata / "cityscapes_samples/tiny_128x256_with_gt/gtFine/frankfurt_000000_000294_gtFine_labelIds.png"
    gt = read_label(gt_file)
    rng = np.random.default_rng(3)
    gt_dir, pred_dir = tmp_path / "gt" / "frankfurt", tmp_path / "pred"
    write_png(gt_dir / gt_file.name, gt)
    pred = _predict(gt, rng)
    pred_file = pred_dir / "frankfurt_000000_000294_leftImg8bit.png"
    write_png(pred_file, pred)
    ref = _cityscapes_reference([pred_file], [gt_dir / gt_file.name], tmp_path)
    out = tmp_path / "ours.json"
    r = run_cli("eval", "--pred", pred_dir, "--gt", tmp_path / "gt", "--gt-format", "labelIds",
                "--pred-format", "labelIds", "--json", out)
    assert r.code == 0, r.err
    ours = json.loads(out.read_text())
    compared = _assert_same_per_class_iou(ours, ref)
    assert compared >= 8  # road, sidewalk, building, vegetation, sky, car, ... of a real street scene
    assert ours["mIoU"] == pytest.approx(ref["averageScoreClasses"], abs=1e-6)


def test_trainids_gt_matches_labelids_gt_and_json_is_consistent(cityscapes, tmp_path, run_cli):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"], "--json", a).code == 0
    assert run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"],
                   "--gt-format", "labelIds", "--json", b).code == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["per_class"] == rb["per_class"] and ra["confusion_matrix"] == rb["confusion_matrix"]
    counts = torch.tensor(ra["confusion_matrix"])
    assert counts.shape == (19, 20)
    assert ra["mIoU"] == pytest.approx(segmentation_scores(counts)["mIoU"])
    assert ra["pixels"] == int(counts.sum())
    assert "exposure" not in ra


def test_images_add_mef1_equal_to_direct_computation(cityscapes, tmp_path, run_cli):
    out = tmp_path / "r.json"
    r = run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"],
                "--images", cityscapes["images"], "--json", out)
    assert r.code == 0, r.err
    res = json.loads(out.read_text())
    from nightseg.core.io import read_image, read_label

    ec = ExposureConfusion()
    for gt_path in sorted(cityscapes["gt"].rglob("*_labelTrainIds.png")):
        stem = gt_path.name.replace("_gtFine_labelTrainIds.png", "")
        pred = read_label(next(cityscapes["pred_train"].rglob(f"{stem}_leftImg8bit_pred.png")))
        image = read_image(next(cityscapes["images"].rglob(f"{stem}_leftImg8bit.png")))
        ec.update(torch.from_numpy(pred), torch.from_numpy(read_label(gt_path)), torch.from_numpy(image).permute(2, 0, 1))
    direct = exposure_scores(ec)
    assert res["exposure"]["average"] == "pixel"
    assert res["exposure"]["mEF1"] == pytest.approx(direct["mEF1"])
    assert [b["ef1"] for b in res["exposure"]["bins"]] == pytest.approx([b["ef1"] for b in direct["bins"]])
    assert sum(b["pixels"] for b in res["exposure"]["bins"]) == res["pixels"]
    assert sum(1 for b in res["exposure"]["bins"] if b["pixels"]) >= 8
    assert "mEF1" in r.out and "[0.9, 1.0]" in r.out
    r2 = run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"],
                 "--images", cityscapes["images"], "--ef1-average", "class", "--json", out)
    assert r2.code == 0
    assert json.loads(out.read_text())["exposure"]["mEF1"] == pytest.approx(exposure_scores(ec, "class")["mEF1"])


@pytest.fixture
def dark_zurich(tmp_path: Path) -> dict[str, Path]:
    """2 scenes in Dark Zurich / ACDC layout; the gt folder holds trainIds, labelIds, colour and invIds maps."""
    rng = np.random.default_rng(3)
    gt_dir, pred_dir, img_dir = tmp_path / "gt" / "night" / "GOPR0356", tmp_path / "pred", tmp_path / "rgb_anon"
    for frame in ("000321", "000322"):
        stem = f"GOPR0356_frame_{frame}"
        gt = _structured_label_ids(rng)
        write_png(gt_dir / f"{stem}_gt_labelIds.png", gt)
        write_png(gt_dir / f"{stem}_gt_labelTrainIds.png", LABEL_ID_TO_TRAIN_ID[gt])
        write_png(gt_dir / f"{stem}_gt_labelColor.png", np.stack([gt, gt * 2, gt * 3], axis=-1))
        invalid = np.zeros(gt.shape, dtype=np.uint8)
        invalid[:, : gt.shape[1] // 3] = 1
        write_png(gt_dir / f"{stem}_gt_invIds.png", invalid)
        write_png(pred_dir / f"{stem}_rgb_anon.png", LABEL_ID_TO_TRAIN_ID[_predict(gt, rng)])
        write_png(img_dir / f"{stem}_rgb_anon.png", _image(rng, gt.shape))
    return {"gt": tmp_path / "gt", "pred": pred_dir, "images": img_dir}


def test_dark_zurich_naming_and_invalid_masks(dark_zurich, tmp_path, run_cli):
    out, out_inv = tmp_path / "r.json", tmp_path / "inv.json"
    assert run_cli("eval", "--pred", dark_zurich["pred"], "--gt", dark_zurich["gt"], "--json", out).code == 0
    r = run_cli("eval", "--pred", dark_zurich["pred"], "--gt", dark_zurich["gt"], "--invalid", dark_zurich["gt"],
                "--images", dark_zurich["images"], "--json", out_inv)
    assert r.code == 0, r.err
    plain, masked = json.loads(out.read_text()), json.loads(out_inv.read_text())
    assert plain["num_images"] == masked["num_images"] == 2
    from nightseg.core.io import read_label

    cm = ConfusionMatrix()
    for gt_path in sorted(dark_zurich["gt"].rglob("*_gt_labelTrainIds.png")):
        stem = gt_path.name.replace("_gt_labelTrainIds.png", "")
        pred = read_label(dark_zurich["pred"] / f"{stem}_rgb_anon.png")
        invalid = read_label(gt_path.parent / f"{stem}_gt_invIds.png") != 0
        cm.update(torch.from_numpy(pred), torch.from_numpy(read_label(gt_path)), torch.from_numpy(invalid))
    assert masked["confusion_matrix"] == cm.counts.tolist()
    assert masked["pixels"] < plain["pixels"]
    assert masked["exposure"]["mEF1"] is not None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aachen_000000_000019_leftImg8bit.png", "plain"),
        ("aachen_000000_000019_gtFine_labelIds.png", "labelIds"),
        ("aachen_000000_000019_gtFine_labelTrainIds.png", "trainIds"),
        ("aachen_000000_000019_gtFine_color.png", "other"),
        ("aachen_000000_000019_leftImg8bit_pred.png", "plain"),
        ("GOPR0356_frame_000321_rgb_anon.png", "plain"),
        ("GOPR0356_frame_000321_gt_labelTrainIds.png", "trainIds"),
        ("GOPR0356_frame_000321_gt_invIds.png", "invalid"),
        ("GOPR0356_frame_000321_gt_labelColor.png", "other"),
    ],
)
def test_scene_stem(name, kind):
    stem, found = scene_stem(Path("x") / name)
    assert found == kind
    assert stem in ("aachen_000000_000019", "GOPR0356_frame_000321")
    assert scene_stem("plain_name.png") == ("plain_name", "plain")


# ---------------------------------------------------------------- bad input: exit code 2, file named


def _error(r, *needles: object) -> None:
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1, r.err
    for needle in needles:
        assert str(needle) in r.err, (needle, r.err)


def test_missing_folders(cityscapes, tmp_path, run_cli):
    _error(run_cli("eval", "--pred", tmp_path / "nope", "--gt", cityscapes["gt"]), tmp_path / "nope", "not found")
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", tmp_path / "nogt"), tmp_path / "nogt")
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"], "--images", tmp_path / "noimg"),
           tmp_path / "noimg")
    empty = tmp_path / "empty"
    empty.mkdir()
    _error(run_cli("eval", "--pred", empty, "--gt", cityscapes["gt"]), empty, "no predictions")


def test_unwritable_output_is_one_line_exit_2(cityscapes, tmp_path, run_cli):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    out = blocker / "scores.json"
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"], "--json", out),
           blocker, "File exists", "check that the path exists")
    assert blocker.read_text() == "a file where a folder should be"


def test_prediction_without_ground_truth_and_reverse(cityscapes, run_cli):
    extra = cityscapes["pred_train"] / "zurich_000001_000002_leftImg8bit.png"
    write_png(extra, np.zeros((48, 96), np.uint8))
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]),
           extra, "1 of 4 predictions have no ground truth")
    extra.unlink()
    gone = next(cityscapes["pred_train"].rglob("lindau_*"))
    gone.unlink()
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]),
           "lindau_000000_000002_gtFine_labelTrainIds.png", "1 of 3 ground-truth maps have no prediction")


def test_size_mismatch(cityscapes, run_cli):
    bad = next(cityscapes["pred_train"].rglob("lindau_*"))
    write_png(bad, np.zeros((24, 48), np.uint8))
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]), bad, "48x24", "96x48")


def test_rgb_label_png(cityscapes, run_cli):
    bad = next(cityscapes["pred_train"].rglob("lindau_*"))
    write_png(bad, np.dstack([np.zeros((48, 96), np.uint8), np.ones((48, 96), np.uint8), np.zeros((48, 96), np.uint8)]))
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]), bad, "colour")


def test_ids_outside_the_table(cityscapes, run_cli):
    bad = next(cityscapes["pred_train"].rglob("lindau_*"))
    label = np.zeros((48, 96), np.uint8)
    label[0, 0] = 26  # a labelId, not a trainId
    write_png(bad, label)
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]), bad, "26", "--pred-format labelIds")
    bad2 = next(cityscapes["pred_label"].rglob("lindau_*"))
    label[0, 0] = 40  # not a Cityscapes labelId
    write_png(bad2, label)
    _error(run_cli("eval", "--pred", cityscapes["pred_label"], "--gt", cityscapes["gt"], "--pred-format", "labelIds",
                   "--gt-format", "labelIds"), bad2, "40", "labelId")


def test_ground_truth_ids_checked_and_format_hint(cityscapes, tmp_path, run_cli):
    labelids_only = tmp_path / "labelids_only"
    for p in cityscapes["gt"].rglob("*_gtFine_labelIds.png"):
        (labelids_only / p.name).parent.mkdir(parents=True, exist_ok=True)
        (labelids_only / p.name).write_bytes(p.read_bytes())
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", labelids_only),
           labelids_only, "--gt-format labelIds")
    bad = next(cityscapes["gt"].rglob("lindau_*_labelTrainIds.png"))
    write_png(bad, np.full((48, 96), 19, np.uint8))
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]), bad, "19")


def test_image_size_mismatch_and_missing_image(cityscapes, run_cli):
    img = next(cityscapes["images"].rglob("lindau_*"))
    write_png(img, np.zeros((10, 10, 3), np.uint8))
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"], "--images", cityscapes["images"]),
           img, "10x10")
    img.unlink()
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"], "--images", cityscapes["images"]),
           cityscapes["images"], "lindau_000000_000002")


def test_invalid_mask_size_mismatch(dark_zurich, run_cli):
    bad = next(dark_zurich["gt"].rglob("*_000322_gt_invIds.png"))
    write_png(bad, np.zeros((5, 5), np.uint8))
    _error(run_cli("eval", "--pred", dark_zurich["pred"], "--gt", dark_zurich["gt"], "--invalid", dark_zurich["gt"]),
           bad, "5x5")


def test_duplicate_stems_and_bad_options(cityscapes, run_cli):
    dup = cityscapes["pred_train"] / "frankfurt_000000_000000_leftImg8bit.png"
    write_png(dup, np.zeros((48, 96), np.uint8))
    _error(run_cli("eval", "--pred", cityscapes["pred_train"], "--gt", cityscapes["gt"]), "frankfurt_000000_000000")
    dup.unlink()
    _error(run_cli("eval", "--pred", cityscapes["pred_label"], "--gt", cityscapes["gt"], "--pred-format", "labelIds",
                   "--num-classes", "7"), "--num-classes")


def test_debug_shows_the_traceback(tmp_path, run_cli):
    with pytest.raises(UserError, match="not found"):
        run_cli("eval", "--pred", tmp_path / "nope", "--gt", tmp_path, "--debug")

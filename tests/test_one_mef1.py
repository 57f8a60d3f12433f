"""One mEF1 (and one valid-pixel mIoU) everywhere: `nightseg evaluate CKPT`, validation inside
`nightseg train` and `nightseg eval --pred` on that checkpoint's predicted files agree on a Dark Zurich-layout
split with invalid masks (issue 21, item 4; docs/methods.md, "Exposure-aware F1")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nightseg.core.io import read_label
from nightseg.evaluation.exposure import ExposureConfusion, exposure_scores, masked_label
from nightseg.methods.base import masked_label as recipe_masked_label

CONFIG = Path(__file__).resolve().parents[1] / "src" / "nightseg" / "configs" / "cpu" / "supervised_cityscapes.yaml"
COUNTS = {"train": 4, "val": 0, "pairs": 0, "night_val": 4, "night_train": 0, "nightcity_val": 0}


def test_masked_label_is_the_shared_definition():
    label = torch.tensor([[0, 1], [2, 255]])
    invalid = torch.tensor([[False, True], [False, True]])
    np.testing.assert_array_equal(masked_label({"label": label, "invalid": invalid}).numpy(), [[0, 255], [2, 255]])
    np.testing.assert_array_equal(masked_label({"label": label}).numpy(), label.numpy())  # no mask: unchanged
    assert recipe_masked_label is masked_label  # the recipes use the very same function


def test_invalid_pixels_are_in_no_exposure_bin():
    # a bright invalid pixel predicted wrongly must not enter mEF1: the bright bin then has no labelled pixel
    image = torch.tensor([[[0.05, 0.95]]]).expand(3, 1, 2)
    label = torch.tensor([[1, 1]])
    pred = torch.tensor([[1, 0]])
    invalid = torch.tensor([[False, True]])
    masked, unmasked = ExposureConfusion(19), ExposureConfusion(19)
    masked.update(pred, masked_label({"label": label, "invalid": invalid}), image)
    unmasked.update(pred, label, image)
    assert exposure_scores(masked)["mEF1"] == pytest.approx(1.0)
    assert exposure_scores(unmasked)["mEF1"] == pytest.approx(0.5)


def test_evaluate_train_validation_and_folder_eval_report_the_same_scores(synthetic_set, tmp_path, run_cli,
                                                                         one_torch_thread):
    root = synthetic_set(COUNTS)
    dark_zurich = root / "dark_zurich"
    gt = dark_zurich / "gt" / "val" / "night"
    invalid_share = np.mean([(read_label(p) != 0).mean() for p in gt.rglob("*_gt_invIds.png")])
    assert 0.0 < invalid_share < 1.0  # the split has invalid pixels, so the two mEF1s could differ
    run = tmp_path / "run"
    r = run_cli("train", "--config", CONFIG, "--out", run, f"data.root={root}",
                "train.max_steps=4", "train.val_every=4", "train.state_every=4", "data.workers=0",
                "data.batch_size=2", "train.progress=false")
    assert r.code == 0, r.err
    val = json.loads((run / "metrics.json").read_text())["val"]
    assert val["step"] == 4
    ckpt = run / "checkpoints" / "last.safetensors"

    report = tmp_path / "report"
    r = run_cli("evaluate", ckpt, "--dataset", "dark_zurich", "--root", dark_zurich, "--out", report,
                "--device", "cpu")
    assert r.code == 0, r.err
    evaluated = json.loads((report / "report.json").read_text())

    images = dark_zurich / "rgb_anon" / "val" / "night"
    pred = tmp_path / "pred"
    assert run_cli("predict", ckpt, images, "--out", pred, "--outputs", "labels").code == 0
    folder = tmp_path / "folder.json"
    r = run_cli("eval", "--pred", pred, "--gt", gt, "--images", images, "--invalid", gt, "--json", folder)
    assert r.code == 0, r.err
    files = json.loads(folder.read_text())

    # mEF1: invalid pixels excluded everywhere
    assert evaluated["exposure"]["mEF1"] == pytest.approx(val["mEF1"], abs=1e-6)
    assert files["exposure"]["mEF1"] == pytest.approx(val["mEF1"], abs=1e-6)
    # mIoU over the valid pixels: validation's mIoU, evaluate's uncertainty.mIoU_valid, eval --invalid's mIoU
    assert evaluated["uncertainty"]["mIoU_valid"] == pytest.approx(val["mIoU"], abs=1e-6)
    assert files["mIoU"] == pytest.approx(val["mIoU"], abs=1e-6)
    # evaluate's headline mIoU is the benchmark's (invalid regions scored with their labels): eval without --invalid
    everything = tmp_path / "everything.json"
    assert run_cli("eval", "--pred", pred, "--gt", gt, "--json", everything).code == 0
    assert evaluated["mIoU"] == pytest.approx(json.loads(everything.read_text())["mIoU"], abs=1e-6)
    # and the test could fail: counting invalid pixels changes mEF1 on this split
    unmasked = tmp_path / "unmasked.json"
    assert run_cli("eval", "--pred", pred, "--gt", gt, "--images", images, "--json", unmasked).code == 0
    assert abs(json.loads(unmasked.read_text())["exposure"]["mEF1"] - val["mEF1"]) > 1e-4

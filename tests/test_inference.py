"""The `Predictor` inference API (whole image, sliding window, TTA, batching, relighting, checkpoint errors)
and the uncertainty-aware IoU (UIoU) of the Dark Zurich benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.errors import UserError
from nightseg.evaluation.metrics import segmentation_scores
from nightseg.evaluation.uncertainty import UncertaintyConfusion, invalid_histogram, uiou_scores
from nightseg.inference import (
    TTA,
    Prediction,
    Predictor,
    SlidingWindow,
    blend_weight,
    load_inference_net,
    window_starts,
)
from nightseg.models import DCENet, build_segmenter
from nightseg.models.relight import save_dce_weights


def _tiny(seed: int = 0, num_classes: int = 19) -> nn.Module:
    torch.manual_seed(seed)
    model = build_segmenter("pspnet_tiny", num_classes=num_classes).eval()
    # give BatchNorm non-trivial statistics so that folding it into the convs is really exercised
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    model = _tiny()
    path = tmp_path_factory.mktemp("ckpt") / "best.safetensors"
    save_checkpoint(path, model.state_dict(), {"model": model.config, "step": 3})
    return path, model.to(memory_format=torch.channels_last)  # dilated convs are ~40x faster channels_last on CPU


@pytest.fixture(scope="module")
def seg(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt[0], device="cpu")


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.contiguous(memory_format=torch.channels_last)).softmax(1)


def _images(n: int = 2, h: int = 40, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


class Pointwise(nn.Module):
    """A 1x1-conv 'segmenter': no spatial context, so sliding windows and flips must not change it."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.config = {"name": "pointwise", "num_classes": num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 4


# --------------------------------------------------------------------------------------------- API
def test_predict_matches_plain_forward(ckpt, seg):
    path, model = ckpt
    image = _images(1)[0]
    pred = seg.predict(image)
    assert isinstance(pred, Prediction)
    assert pred.labels.shape == image.shape[:2] and pred.labels.dtype == np.uint8
    assert pred.probs.shape == (19, *image.shape[:2])
    torch.testing.assert_close(pred.probs.sum(0), torch.ones(image.shape[:2]), atol=1e-5, rtol=0)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    expected = _reference(model, x)[0]
    # BatchNorm folding + channels_last change nothing beyond float rounding
    torch.testing.assert_close(pred.probs, expected, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(pred.labels, pred.probs.argmax(0).numpy())
    np.testing.assert_allclose(pred.confidence, pred.probs.max(0).values.numpy(), atol=1e-6)
    # the same image as a path and as a [3,H,W] float tensor
    from nightseg.core.io import write_png

    write_png(path.parent / "img.png", image)
    np.testing.assert_array_equal(seg.predict(path.parent / "img.png").labels, pred.labels)
    np.testing.assert_array_equal(seg.predict(x[0]).labels, pred.labels)


def test_batched_equals_single(seg):
    images = _images(2) + _images(1, 32, 48, seed=3)
    batch = seg.predict_batch(images, return_probs=True)
    for image, got in zip(images, batch):
        one = seg.predict(image)
        np.testing.assert_array_equal(got.labels, one.labels)
        torch.testing.assert_close(got.probs, one.probs, atol=1e-5, rtol=0)
    # without probabilities/confidence the labels come straight from the argmax of the logits
    fast = seg.predict_batch(images, return_confidence=False)
    assert fast[0].confidence is None and fast[0].probs is None
    np.testing.assert_array_equal(fast[2].labels, batch[2].labels)


def test_window_starts_and_weights():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]  # last window flush with the border
    assert window_starts(5, 8, 4) == [0]
    w = blend_weight(9, 17)
    assert w.shape == (9, 17) and float(w.max()) == pytest.approx(1.0) and float(w.min()) > 0
    assert float(w[4, 8]) == pytest.approx(1.0) and float(w[0, 0]) < 0.01
    assert torch.equal(blend_weight(3, 3, "uniform"), torch.ones(3, 3))
    with pytest.raises(UserError, match="stride"):
        SlidingWindow((16, 16), (20, 8))


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_sliding_window_equals_whole_image_for_context_free_model(blend):
    net = Pointwise()
    whole = Predictor(net, 5, channels_last=False)
    slide = Predictor(net, 5, sliding=SlidingWindow((16, 24), (7, 11), blend), channels_last=False)
    x = torch.rand(2, 3, 37, 61)
    torch.testing.assert_close(slide.logits(x), whole.logits(x), atol=1e-5, rtol=0)


@pytest.fixture
def fresh(seg):
    """The shared Predictor, its sliding / TTA settings restored after the test."""
    yield seg
    seg.sliding, seg.tta = None, TTA()


def test_sliding_window_blends_overlapping_windows(fresh):
    seg = fresh
    x = torch.rand(1, 3, 48, 80)
    whole = seg.logits(x)
    # one window covering the whole image is whole-image inference
    seg.sliding = SlidingWindow((64, 96), (64, 96))
    torch.testing.assert_close(seg.logits(x), whole, atol=1e-5, rtol=0)
    # uniform blending of two overlapping windows = the mean of the two windows' logits where they overlap
    seg.sliding = SlidingWindow((48, 48), (48, 32), "uniform")
    left, right = seg._forward(x[..., :48]), seg._forward(x[..., 32:])
    out = seg.logits(x)
    torch.testing.assert_close(out[..., :32], left[..., :32], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 32:48], (left[..., 32:] + right[..., :16]) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 48:], right[..., 16:], atol=1e-5, rtol=0)


def test_tta_flip_and_scales(fresh):
    assert TTA.parse("flip,0.5,1.25") == TTA(True, (0.5, 1.25))
    assert TTA.parse(None) == TTA() and not TTA().enabled
    with pytest.raises(UserError, match="--tta"):
        TTA.parse("flop")
    seg = fresh
    seg.tta = TTA.parse("flip")
    x = torch.rand(1, 3, 40, 64)
    plain = seg.logits(x).softmax(1)
    flipped = seg.logits(x.flip(-1)).flip(-1).softmax(1)
    torch.testing.assert_close(seg.probabilities(x), (plain + flipped) / 2, atol=1e-6, rtol=0)
    assert not torch.allclose(plain, flipped, atol=1e-3)  # the flip really changed something
    seg.tta = TTA(False, (0.5, 1.0))
    half = torch.nn.functional.interpolate(x, size=(20, 32), mode="bilinear", align_corners=False)
    small = torch.nn.functional.interpolate(seg.logits(half), size=(40, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seg.probabilities(x), (plain + small.softmax(1)) / 2, atol=1e-6, rtol=0)
    # a context-free model is flip-invariant: TTA must not change it
    point = Predictor(Pointwise(), 5, tta=TTA(True), channels_last=False)
    torch.testing.assert_close(point.probabilities(x), point.logits(x).softmax(1), atol=1e-6, rtol=0)


def test_relighting_from_weights_and_bundled(ckpt, tmp_path):
    path, model = ckpt
    dce = DCENet(generator=torch.Generator().manual_seed(5)).eval()
    weights = save_dce_weights(dce, tmp_path / "dce.safetensors")
    image = _images(1)[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = _reference(model, dce(x).clamp(0, 1))[0]
    seg = Predictor.from_checkpoint(path, relight=weights)
    torch.testing.assert_close(seg.predict(image).probs, expected, atol=1e-4, rtol=0)
    assert seg.relit(image).shape == image.shape and not np.array_equal(seg.relit(image), image)
    # a ULCA-style checkpoint bundles the relighting net (relight.* tensors + model["relight"]): used by default
    bundled = tmp_path / "ulca.safetensors"
    tensors = {**model.state_dict(), **{f"relight.{k}": v for k, v in dce.state_dict().items()}}
    save_checkpoint(bundled, tensors, {"model": {**model.config, "relight": dce.config}})
    torch.testing.assert_close(Predictor.from_checkpoint(bundled).predict(image).probs, expected, atol=1e-4, rtol=0)
    net, _ = load_inference_net(bundled, relight=False)
    assert net.relight is None


def test_checkpoint_errors_name_the_file(ckpt, tmp_path):
    path, model = ckpt
    five = _tiny(num_classes=5)
    wrong_classes = tmp_path / "five.safetensors"
    save_checkpoint(wrong_classes, five.state_dict(), {"model": model.config})  # says 19, holds a 5-class head
    with pytest.raises(UserError, match=r"five\.safetensors.*class count"):
        Predictor.from_checkpoint(wrong_classes)
    wrong_arch = tmp_path / "arch.safetensors"
    save_checkpoint(wrong_arch, model.state_dict(), {"model": {"name": "lraspp_mobilenetv3", "num_classes": 19}})
    with pytest.raises(UserError, match=r"arch\.safetensors.*architecture"):
        Predictor.from_checkpoint(wrong_arch)
    with pytest.raises(UserError, match="missing.safetensors: checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="--backend"):
        Predictor.from_checkpoint(path, backend="tensorrt")


def test_prediction_invalid_and_uint16():
    pred = Prediction(np.array([[1, 2], [3, 4]], np.uint8), np.array([[0.2, 0.9], [0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(pred.labels_invalid(0.5), [[255, 2], [3, 4]])
    np.testing.assert_array_equal(pred.confidence_uint16(), [[13107, 58982], [32768, 65535]])


# --------------------------------------------------------------------------------------------- UIoU
def test_uiou_without_invalid_predictions_is_iou():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 4, (30, 40)))
    target[0, :5] = 255
    pred = torch.from_numpy(rng.integers(0, 4, (30, 40)))
    invalid = torch.from_numpy(rng.random((30, 40)) < 0.3)
    scores = uiou_scores(invalid_histogram(pred, target, invalid, 4))
    iou = segmentation_scores(invalid_histogram(pred, target, invalid, 4).sum(0))
    for name, s in scores["per_class"].items():
        assert s["uiou"] == pytest.approx(iou["per_class"][name]["iou"])
    assert scores["mUIoU"] == pytest.approx(iou["mIoU"]) and scores["invalid_share"] == 0


def test_uiou_counts_true_and_false_invalid():
    # 2 classes, 8 pixels; J marks the last 4 as invalid in the ground truth
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    gt_inv = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    pred = torch.tensor([0, 0, 255, 1, 1, 255, 255, 0])  # FI at 2, TI at 5 and 6
    s = uiou_scores(invalid_histogram(pred, target, gt_inv, 2))
    c0, c1 = s["per_class"]["class_0"], s["per_class"]["class_1"]
    assert (c0["tp"], c0["fp"], c0["fn"], c0["ti"], c0["fi"]) == (2, 1, 1, 0, 1)
    assert (c1["tp"], c1["fp"], c1["fn"], c1["ti"], c1["fi"]) == (1, 1, 1, 2, 0)
    assert c0["uiou"] == pytest.approx(2 / 5)  # (TP+TI)/(TP+TI+FP+FN+FI) = 2/(2+1+1+1)
    assert c1["uiou"] == pytest.approx(3 / 5)  # (1+2)/(1+2+1+1)
    assert c0["iou"] == pytest.approx(2 / 5) and c1["iou"] == pytest.approx(1 / 5)  # invalid = misses for IoU
    assert (s["true_invalid"], s["false_invalid"]) == (2, 1)


def test_uiou_rewards_invalidating_truly_invalid_pixels_only():
    target = torch.tensor([0, 0, 1, 1, 1, 1])
    gt_inv = torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool)
    base = torch.tensor([0, 0, 1, 1, 0, 0])  # wrong on the two truly invalid pixels
    m = uiou_scores(invalid_histogram(base, target, gt_inv, 2))["mUIoU"]
    better = uiou_scores(invalid_histogram(torch.tensor([0, 0, 1, 1, 255, 255]), target, gt_inv, 2))["mUIoU"]
    worse = uiou_scores(invalid_histogram(torch.tensor([255, 0, 1, 1, 0, 0]), target, gt_inv, 2))["mUIoU"]
    assert better > m > worse


def test_uncertainty_confusion_thresholds_match_explicit_invalidation():
    rng = np.random.default_rng(3)
    shape = (20, 30)
    target = torch.from_numpy(rng.integers(0, 3, shape))
    target[:2] = 255
    pred = torch.from_numpy(rng.integers(0, 3, shape))
    gt_inv = torch.from_numpy(rng.random(shape) < 0.4)
    conf = torch.from_numpy(rng.random(shape).astype(np.float32))
    uc = UncertaintyConfusion(3, num_bins=10)
    uc.update(pred, target, gt_inv, conf)
    for theta in (0.0, 0.3, 0.5, 0.9):
        explicit = torch.where(conf < theta, torch.tensor(255), pred)
        torch.testing.assert_close(uc.counts_at(theta), invalid_histogram(explicit, target, gt_inv, 3))
    assert uc.scores(0.0)["mUIoU"] == pytest.approx(segmentation_scores(uc.counts_at(0.0).sum(0))["mIoU"])
    avg = uc.average_uiou()
    values = [uc.scores(t)["mUIoU"] for t in uc.thresholds()]
    assert avg == pytest.approx(sum(values) / len(values)) and not math.isnan(avg)
    with pytest.raises(ValueError, match="grid"):
        uc.counts_at(0.25)

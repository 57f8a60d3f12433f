"""ULCA loss terms against hand-computed values (ULCA, Eq. 4-8) and the pseudo-label fusion."""

from __future__ import annotations

import math

import pytest
import torch

from nightseg.core.classes import IGNORE_INDEX, NUM_CLASSES
from nightseg.losses.segmentation import (
    CITYSCAPES_FREQUENCIES,
    class_frequencies,
    class_weights,
    consistency_kl,
    neighbourhood_onehot,
    static_loss,
    weighted_cross_entropy,
)
from nightseg.methods.pseudo_label import fuse_day_night, pseudo_label

LN3 = math.log(3.0)


def logits_1xw(columns: list[list[float]]) -> torch.Tensor:
    """[1, C, 1, W] logits from a list of per-pixel logit vectors."""
    return torch.tensor(columns, dtype=torch.float32).T[None, :, None, :].contiguous()


# ---------------------------------------------------------------- class weights (Eq. 5 and DANNet)


def test_inverse_frequency_weights_eq5():
    # w_k = 1 / a_k: a = (0.5, 0.25, 0.25) -> (2, 4, 4); unnormalised counts give the same weights.
    assert torch.allclose(class_weights([0.5, 0.25, 0.25]), torch.tensor([2.0, 4.0, 4.0]))
    assert torch.allclose(class_weights([2, 1, 1]), torch.tensor([2.0, 4.0, 4.0]))
    # The expected weight of a source pixel, sum_k a_k w_k, equals |C|: Eq. 6's 1/(N|C|) makes it 1.
    a = torch.tensor(CITYSCAPES_FREQUENCIES, dtype=torch.float64)
    a = a / a.sum()
    assert float((a * class_weights(a).double()).sum()) == pytest.approx(NUM_CLASSES, rel=1e-5)
    # An absent class gets a finite (large) weight.
    w = class_weights([1.0, 0.0])
    assert torch.isfinite(w).all() and float(w[1]) == pytest.approx(1e6)


def test_dannet_log_normalised_weights():
    # l = log a = (log .5, log .25, log .25): deviations from the mean (2, -1, -1) * ln2/3, unbiased
    # std = ln2/sqrt(3), so w = 1 - (mean - l)/std*0.05... = (1 - 0.05*2/sqrt(3), 1 + 0.05/sqrt(3), same).
    w = class_weights([0.5, 0.25, 0.25], scheme="dannet_log", std=0.05)
    s3 = math.sqrt(3.0)
    assert torch.allclose(w, torch.tensor([1 - 0.1 / s3, 1 + 0.05 / s3, 1 + 0.05 / s3]), atol=1e-6)
    city = class_weights(CITYSCAPES_FREQUENCIES, scheme="dannet_log")
    assert float(city.mean()) == pytest.approx(1.0, abs=1e-6)  # centred on 1
    assert int(city.argmin()) == 0 and int(city.argmax()) == 17  # road lightest, motorcycle heaviest
    assert torch.equal(class_weights([0.3, 0.7], scheme="none"), torch.ones(2))
    with pytest.raises(ValueError, match="unknown class-weight scheme"):
        class_weights([0.5, 0.5], scheme="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all zero"):
        class_weights([0.0, 0.0])


def test_class_frequencies_count_valid_pixels_only():
    labels = [torch.tensor([[0, 0, 1, IGNORE_INDEX]]), torch.tensor([[2, 0]])]
    freq = class_frequencies(labels, num_classes=3, progress=False)
    assert torch.allclose(freq, torch.tensor([3 / 5, 1 / 5, 1 / 5], dtype=torch.float64))


# ---------------------------------------------------------------- weighted cross-entropy (Eq. 6)


def test_weighted_cross_entropy_eq6_by_hand():
    # Pixel 0: logits (0, 0), label 0 -> -log p = ln 2.  Pixel 1: logits (ln3, 0), label 1 -> p = 1/4,
    # -log p = ln 4 = 2 ln 2.  Pixel 2 is ignored.  Weights w = (2, 3).
    logits = logits_1xw([[0.0, 0.0], [LN3, 0.0], [5.0, -5.0]])
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    w = torch.tensor([2.0, 3.0])
    ln2 = math.log(2.0)
    # paper: (2 ln2 + 3 * 2 ln2) / (N |C|) = 8 ln2 / (2 * 2) = 2 ln2
    assert float(weighted_cross_entropy(logits, target, w)) == pytest.approx(2 * ln2, rel=1e-6)
    # PyTorch/DANNet weighted mean: 8 ln2 / (2 + 3)
    got = weighted_cross_entropy(logits, target, w, normalization="weighted_mean")
    assert float(got) == pytest.approx(8 * ln2 / 5, rel=1e-6)
    assert float(got) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target, weight=w,
                                                                                 ignore_index=255)), rel=1e-6)
    # mean over N: 8 ln2 / 2
    assert float(weighted_cross_entropy(logits, target, w, normalization="mean")) == pytest.approx(4 * ln2)
    # Unweighted: plain mean CE (ln2 + 2 ln2) / 2
    assert float(weighted_cross_entropy(logits, target)) == pytest.approx(1.5 * ln2, rel=1e-6)


def test_weighted_cross_entropy_without_valid_pixels_is_zero_with_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.full((1, 2, 2), IGNORE_INDEX), torch.ones(3))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(logits.grad.abs().sum()) == 0.0


# ---------------------------------------------------------------- static loss (Eq. 7-8)
# Two static classes (0, 1) and one dynamic class (2). Every pixel has logits (ln3, 0, 5): the softmax
# over the static channels is (0.75, 0.25) whatever the dynamic logit.

STATIC = (0, 1)
PIX = [LN3, 0.0, 5.0]


def test_static_loss_neighbour_one_pixel_away_counts_as_correct():
    logits = logits_1xw([PIX, PIX, PIX])
    label = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    # Pixel 0 (label 0, neighbours {0, 1}): p = max(0.75, 0.25) = 0.75.
    # Pixel 1 (label 1, neighbours {0, 1, ignore}): class 0 is one pixel away, so p = 0.75 too.
    # Pixel 2 is ignored (N = 2).  gamma = 0: L = -ln 0.75.
    loss = static_loss(logits, label, gamma=0.0, static_classes=STATIC)
    assert float(loss) == pytest.approx(-math.log(0.75), rel=1e-6)
    # Focal exponent gamma = 2: (1 - 0.75)^2 * -ln 0.75.
    loss2 = static_loss(logits, label, gamma=2.0, static_classes=STATIC)
    assert float(loss2) == pytest.approx(0.0625 * -math.log(0.75), rel=1e-6)
    # Without the neighbourhood (1x1) pixel 1 only sees class 1: (-ln .75 - ln .25) / 2.
    loss1 = static_loss(logits, label, gamma=0.0, static_classes=STATIC, kernel=1)
    assert float(loss1) == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)


def test_static_loss_two_pixels_away_does_not_count():
    logits = logits_1xw([PIX, PIX, PIX, PIX])
    label = torch.tensor([[[1, 1, 1, 0]]])
    # Pixels 0 and 1 see only class 1 (class 0 is 2-3 pixels away): p = 0.25. Pixels 2, 3 see class 0:
    # p = 0.75.  L = (2 ln 4 + 2 (-ln 0.75)) / 4.
    loss = static_loss(logits, label, gamma=0.0, static_classes=STATIC)
    assert float(loss) == pytest.approx((2 * math.log(4.0) - 2 * math.log(0.75)) / 4, rel=1e-6)


def test_static_loss_ignores_dynamic_pixels_and_channels():
    label = torch.tensor([[[0, 2, 2]]])  # pixels labelled with the dynamic class 2 are not counted (N = 1)
    a = static_loss(logits_1xw([PIX, PIX, PIX]), label, gamma=0.0, static_classes=STATIC)
    assert float(a) == pytest.approx(-math.log(0.75), rel=1e-6)
    other = [LN3, 0.0, -7.0]  # a different dynamic logit does not change the static softmax
    b = static_loss(logits_1xw([other, other, other]), label, gamma=0.0, static_classes=STATIC)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    # With softmax over all channels the dynamic logit matters: p0 = 3 / (3 + 1 + e^5).
    c = static_loss(logits_1xw([PIX] * 3), label, gamma=0.0, static_classes=STATIC, softmax_over="all")
    assert float(c) == pytest.approx(-math.log(3 / (4 + math.exp(5.0))), rel=1e-5)
    # All pixels dynamic: zero loss.
    z = static_loss(logits_1xw([PIX] * 3), torch.full((1, 1, 3), 2), static_classes=STATIC)
    assert float(z) == 0.0


def test_static_loss_class_weights_multiply_probabilities_dannet_style():
    logits = logits_1xw([PIX, PIX])
    label = torch.tensor([[[1, 1]]])
    # Only class 1 in every neighbourhood; weighted probability 2 * 0.25 = 0.5.
    loss = static_loss(logits, label, gamma=0.0, static_classes=STATIC, weights=torch.tensor([1.0, 2.0, 9.0]))
    assert float(loss) == pytest.approx(math.log(2.0), rel=1e-6)


def test_neighbourhood_is_3x3_including_diagonals():
    label = torch.ones(1, 4, 4, dtype=torch.long)
    label[0, 0, 0] = 0
    near = neighbourhood_onehot(label, (0, 1))
    expected0 = torch.zeros(4, 4)
    expected0[:2, :2] = 1  # the corner class reaches its 3 neighbours, diagonal included
    assert torch.equal(near[0, 0], expected0)
    assert torch.equal(near[0, 1], torch.ones(4, 4))  # (0,0)'s own neighbours carry class 1


def test_static_loss_gradient_reaches_only_night_static_logits():
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    label = torch.randint(0, 3, (2, 5, 6))
    static_loss(logits, label, static_classes=STATIC).backward()
    assert float(logits.grad[:, :2].abs().sum()) > 0
    assert float(logits.grad[:, 2].abs().sum()) == 0.0


# ---------------------------------------------------------------- consistency (Eq. 4)


def test_kl_direction_weak_target_to_strong_prediction():
    weak = logits_1xw([[0.0, 0.0]])  # Y_w = (0.5, 0.5)
    strong = logits_1xw([[LN3, 0.0]])  # P_s = (0.75, 0.25)
    # KL(Y_w || P_s) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3) = 0.143841
    forward_kl = 0.5 * math.log(4.0 / 3.0)
    # The reverse KL(P_s || Y_w) = .75 ln 1.5 + .25 ln .5 = 0.130812 would be a different number.
    reverse_kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = float(consistency_kl(strong, weak))
    assert got == pytest.approx(forward_kl, rel=1e-6)
    assert abs(got - reverse_kl) > 0.01
    # Identical predictions: zero.
    assert float(consistency_kl(strong, strong)) == pytest.approx(0.0, abs=1e-7)


def test_kl_stop_gradient_on_weak_branch():
    weak = logits_1xw([[0.0, 0.0]]).requires_grad_(True)
    strong = logits_1xw([[LN3, 0.0]]).requires_grad_(True)
    consistency_kl(strong, weak).backward()
    assert weak.grad is None  # the weak branch is detached: no gradient flows into it
    # d KL / d strong_logits = P_s - Y_w = (0.25, -0.25)
    assert torch.allclose(strong.grad.flatten(), torch.tensor([0.25, -0.25]), atol=1e-6)


def test_kl_hard_target_and_valid_mask():
    weak = logits_1xw([[1.0, 0.0], [0.0, 1.0]])
    strong = logits_1xw([[LN3, 0.0], [LN3, 0.0]])
    # Hard targets (0, 1): -ln .75 and -ln .25, mean.
    got = consistency_kl(strong, weak, target="hard")
    assert float(got) == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2, rel=1e-6)
    only_first = consistency_kl(strong, weak, target="hard", valid=torch.tensor([[[True, False]]]))
    assert float(only_first) == pytest.approx(-math.log(0.75), rel=1e-6)


# ---------------------------------------------------------------- pseudo-label fusion (DANNet)


def test_dannet_fusion_trusts_confident_day_logits():
    # Channels: static 0, static 1, dynamic 2. Day logits (1.0, 0.0, 9.0), night (0.0, 2.0, 0.5).
    # Static channel 0: day 1.0 > 0.4 -> t = 0.8: 0.8*1 + 0.2*0 = 0.8.
    # Static channel 1: day 0.0 <= 0.4 -> t = 0.2: 0.2*0 + 0.8*2 = 1.6.  Dynamic: night 0.5.
    day = logits_1xw([[1.0, 0.0, 9.0]])
    night = logits_1xw([[0.0, 2.0, 0.5]])
    fused = fuse_day_night(day, night, static_classes=STATIC)
    assert torch.allclose(fused.flatten(), torch.tensor([0.8, 1.6, 0.5]))
    assert int(pseudo_label(fused, static_classes=STATIC, static_only=True)) == 1
    # Weights (DANNet multiplies before the argmax): (3, 1, 1) -> 2.4 beats 1.6.
    assert int(pseudo_label(fused, torch.tensor([3.0, 1.0, 1.0]), static_classes=STATIC)) == 0
    # "day" replaces the static channels by the day logits; "night" keeps night alone.
    assert torch.allclose(fuse_day_night(day, night, "day", STATIC).flatten(), torch.tensor([1.0, 0.0, 0.5]))
    assert torch.allclose(fuse_day_night(day, night, "night", STATIC).flatten(), torch.tensor([0.0, 2.0, 0.5]))


def test_pseudo_label_dynamic_argmax_is_ignored_for_the_static_loss():
    fused = logits_1xw([[0.0, 1.0, 3.0], [2.0, 1.0, 0.0]])
    assert pseudo_label(fused, static_classes=STATIC, static_only=True).flatten().tolist() == [IGNORE_INDEX, 0]
    assert pseudo_label(fused, static_classes=STATIC).flatten().tolist() == [2, 0]  # NightMix label S~_Bn
    # The literal Eq. 8 F_td = argmax(P_td^S): static channels only, no ignored pixel.
    assert pseudo_label(fused, static_classes=STATIC, restrict_to_static=True).flatten().tolist() == [1, 0]


def test_fusion_is_detached_and_resizes_day():
    day = torch.randn(1, 3, 4, 4, requires_grad=True)
    night = torch.randn(1, 3, 8, 8, requires_grad=True)
    fused = fuse_day_night(day, night, static_classes=STATIC)
    assert fused.shape == (1, 3, 8, 8) and not fused.requires_grad

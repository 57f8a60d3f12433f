"""NightMix (ULCA, Section 3.1): mask from a hand-made label with a fixed generator, mixed image/label."""

from __future__ import annotations

import torch

from nightseg.core.classes import class_index, hard_classes
from nightseg.methods.nightmix import class_mask, match_size, nightmix, select_classes

ROAD, SIDEWALK, BUILDING, SKY, CAR = 0, 1, 2, 10, 13
IGN = 255

# A hand-made 4x4 source label L_A: sky on top, building and a car in the middle, sidewalk and road below,
# plus one ignored pixel. Hard classes present (road and sky are easy): sidewalk, building, car.
L_A = torch.tensor(
    [
        [SKY, SKY, SKY, IGN],
        [BUILDING, BUILDING, CAR, CAR],
        [SIDEWALK, SIDEWALK, CAR, CAR],
        [ROAD, ROAD, ROAD, ROAD],
    ]
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_default_easy_classes_are_road_vegetation_sky():
    hard = hard_classes()
    for easy in ("road", "vegetation", "sky"):
        assert class_index(easy) not in hard
    assert len(hard) == 16 and CAR in hard and SIDEWALK in hard


def test_mask_from_hand_made_label_with_fixed_generator():
    # 3 hard classes present -> ceil(3/2) = 2 are picked. With seed 0, torch.randperm(3) = [2, 0, 1]: the
    # present classes [sidewalk, building, car] at positions 2 and 0 -> {car, sidewalk}.
    chosen = select_classes(L_A[None], hard_classes(), gen(0))
    assert chosen == [[SIDEWALK, CAR]]
    mask = class_mask(L_A[None], chosen)[0]
    expected = torch.tensor(
        [
            [0, 0, 0, 0],
            [0, 0, 1, 1],
            [1, 1, 1, 1],
            [0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    # Seed 1: randperm(3) = [1, 2, 0] -> positions 1 and 2 -> {building, car}.
    assert select_classes(L_A[None], hard_classes(), gen(1)) == [[BUILDING, CAR]]


def test_easy_and_ignored_pixels_are_never_selected_and_half_is_rounded_up():
    for seed in range(30):
        (chosen,) = select_classes(L_A[None], hard_classes(), gen(seed))
        assert len(chosen) == 2
        assert set(chosen) <= {SIDEWALK, BUILDING, CAR}
    # A single hard class present is always pasted: ceil(1/2) = 1.
    road_and_car = torch.tensor([[ROAD, CAR], [ROAD, SKY]])
    assert select_classes(road_and_car[None], hard_classes(), gen(3)) == [[CAR]]
    # No hard class at all: empty mask.
    easy_only = torch.tensor([[ROAD, SKY], [IGN, ROAD]])
    assert select_classes(easy_only[None], hard_classes(), gen(3)) == [[]]
    assert not class_mask(easy_only[None], [[]]).any()


def test_always_classes_are_pasted_whenever_present_and_the_half_is_drawn_from_the_rest():
    # always=[car]: car is chosen, and ceil(2/2) = 1 of the other present hard classes [sidewalk, building].
    # Seed 0: randperm(2) = [0, 1] -> sidewalk; seed 1: randperm(2) = [1, 0] -> building.
    assert select_classes(L_A[None], hard_classes(), gen(0), always=[CAR]) == [[SIDEWALK, CAR]]
    assert select_classes(L_A[None], hard_classes(), gen(1), always=[CAR]) == [[BUILDING, CAR]]
    for seed in range(20):
        # an always-class that is absent (bus) or easy (road) adds nothing; with none present this is ClassMix
        assert select_classes(L_A[None], hard_classes(), gen(seed), always=[class_index("bus"), ROAD]) == \
            select_classes(L_A[None], hard_classes(), gen(seed))
        (chosen,) = select_classes(L_A[None], hard_classes(), gen(seed), always=[CAR, BUILDING])
        assert chosen == [SIDEWALK, BUILDING, CAR]  # both forced, plus ceil(1/2) = 1 of [sidewalk]
    a, b_n, s_bn = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 8)
    _, label, mask = nightmix(a, L_A[None], b_n, s_bn, generator=gen(1), always=[CAR])
    assert torch.equal(mask[0], (L_A == CAR) | (L_A == BUILDING))
    assert torch.equal(label[0], torch.where(mask[0], L_A, torch.tensor(8)))


def test_easy_classes_are_configurable():
    hard = hard_classes(easy=("road", "sky", "car"))
    for seed in range(10):
        (chosen,) = select_classes(L_A[None], hard, gen(seed))
        assert CAR not in chosen and len(chosen) == 1  # sidewalk, building present -> 1 of 2


def test_mixed_image_and_label():
    a = torch.full((1, 3, 4, 4), 0.9)
    b_n = torch.full((1, 3, 4, 4), 0.1)
    s_bn = torch.full((1, 4, 4), 8)  # the day-corrected night pseudo label: vegetation everywhere
    x_a, y_a, m = nightmix(a, L_A[None], b_n, s_bn, hard_classes(), gen(0))
    # Same mask as the hand-computed one above (car + sidewalk).
    assert m[0].sum() == 6
    assert torch.allclose(x_a[0, :, m[0]], torch.tensor(0.9))
    assert torch.allclose(x_a[0, :, ~m[0]], torch.tensor(0.1))
    expected_y = torch.tensor(
        [
            [8, 8, 8, 8],  # sky (easy) and the ignored pixel come from the night label
            [8, 8, CAR, CAR],  # building not picked with seed 0
            [SIDEWALK, SIDEWALK, CAR, CAR],
            [8, 8, 8, 8],
        ]
    )
    assert torch.equal(y_a[0], expected_y)
    assert y_a.dtype == torch.int64


def test_batched_masks_are_per_image_and_deterministic():
    other = torch.full((4, 4), ROAD)
    other[0, 0] = CAR
    labels = torch.stack([L_A, other])
    chosen = select_classes(labels, hard_classes(), gen(5))
    assert chosen[1] == [CAR] and len(chosen[0]) == 2
    assert select_classes(labels, hard_classes(), gen(5)) == chosen
    imgs = torch.rand(2, 3, 4, 4)
    x1, y1, m1 = nightmix(imgs, labels, torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long),
                          generator=gen(5))
    assert m1[1].sum() == 1 and bool(m1[1, 0, 0])
    assert torch.equal(x1[1, :, 0, 0], imgs[1, :, 0, 0]) and float(x1[1, :, 1:, :].abs().sum()) == 0.0
    assert int(y1[1, 0, 0]) == CAR and int(y1[1].sum()) == CAR


def test_match_size_crops_image_and_label_together():
    yy, xx = torch.meshgrid(torch.arange(6), torch.arange(8), indexing="ij")
    coords = yy * 10 + xx
    image = coords.float().expand(2, 3, 6, 8).clone()
    label = coords.expand(2, 6, 8).clone()
    img_c, lab_c = match_size(image, label, (4, 4), gen(0))
    assert img_c.shape == (2, 3, 4, 4) and lab_c.shape == (2, 4, 4)
    assert torch.equal(img_c[:, 0].long(), lab_c)
    # The crop is contiguous: each row steps by 1, each column by 10.
    assert torch.equal(lab_c[:, :, 1:] - lab_c[:, :, :-1], torch.ones(2, 4, 3, dtype=torch.long))
    # A smaller night image is resized instead.
    img_r, lab_r = match_size(image[:, :, :3, :4], label[:, :3, :4], (6, 8), gen(0))
    assert img_r.shape == (2, 3, 6, 8) and lab_r.shape == (2, 6, 8)
    assert set(lab_r.unique().tolist()) <= set(label[:, :3, :4].unique().tolist())

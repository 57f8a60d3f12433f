"""Self-training recipes (DACS, DAFormer, MIC, HRDA, ULCA with a mean teacher): hand-computed values of each
building block, two training steps of every recipe on the synthetic benchmark, and exact resume with the
teacher state after a stop mid-run."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from nightseg.core.classes import CLASS_NAMES, IGNORE_INDEX
from nightseg.core.config import load_config
from nightseg.data.photometric import (
    MixAugmentConfig,
    RegionJitterConfig,
    fourier_style,
    mix_augment,
    region_jitter,
)
from nightseg.data.rare_class import RareClassSampling, rcs_probabilities
from nightseg.data.streams import StepStreams
from nightseg.methods.self_training import (
    block_mask,
    classmix,
    confidence_mask,
    confidence_weight,
    downscale_label_ratio,
    masked_feature_distance,
    pixel_weighted_ce,
)
from nightseg.methods.teacher import MeanTeacher, TeacherParams, ema_alpha, ema_update_
from nightseg.models.backbones import ResNetBackbone
from nightseg.models.hrda import detail_box, fuse_scales, hrda
from nightseg.models.relight import DCENet, save_dce_weights

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"train": 4, "val": 0, "pairs": 4, "night_val": 2, "night_train": 0, "nightcity_val": 0}
RECIPES = ("dacs", "daformer", "mic", "hrda", "ulca_st")


# --------------------------------------------------------------------------------------------- EMA teacher
def test_ema_alpha_warmup_values():
    assert ema_alpha(0, 0.99) == 0.0  # step 0: the teacher becomes a copy of the student
    assert ema_alpha(1, 0.99) == 0.5
    assert ema_alpha(9, 0.99) == pytest.approx(0.9)
    assert ema_alpha(99, 0.99) == pytest.approx(0.99)
    assert ema_alpha(5000, 0.999) == 0.999
    assert ema_alpha(1, 0.99, warmup=False) == 0.99


def test_ema_update_parameters_and_buffers_by_hand():
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        teacher.running_mean.fill_(0.0)
        student.running_mean.fill_(2.0)
        student.num_batches_tracked.fill_(7)
    ema_update_(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.tensor([1.5, 1.5]))  # 0.75 * 1 + 0.25 * 3
    assert torch.allclose(teacher.running_mean, torch.tensor([0.5, 0.5]))  # float buffers: same EMA
    assert int(teacher.num_batches_tracked) == 7  # integer buffers: copied
    ema_update_(teacher, student, 0.75, buffers="copy")
    assert torch.allclose(teacher.running_mean, torch.tensor([2.0, 2.0]))


def test_mean_teacher_steps_frozen_and_eval_mode():
    student = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Dropout(0.5))
    with torch.no_grad():
        student[0].weight.fill_(2.0)
    teacher = MeanTeacher(student, TeacherParams(alpha=0.9))
    assert not any(q.requires_grad for q in teacher.parameters())
    with torch.no_grad():
        student[0].weight.fill_(4.0)
    assert teacher.update(student, 0) == 0.0 and float(teacher.net[0].weight) == 4.0
    with torch.no_grad():
        student[0].weight.fill_(6.0)
    assert teacher.update(student, 1) == 0.5 and float(teacher.net[0].weight) == 5.0
    assert teacher.update(student, 100) == 0.9 and float(teacher.net[0].weight) == pytest.approx(5.1)
    teacher.train()
    x = torch.ones(64, 1)
    assert torch.equal(teacher.predict(x), torch.full((64, 1), float(teacher.net[0].weight)))  # no dropout
    assert teacher.net.training  # the module's mode is restored


# --------------------------------------------------------------------------------------------- ClassMix etc.
def test_classmix_pastes_the_only_candidate_class_by_hand():
    source = torch.full((1, 3, 2, 3), 0.9)
    target = torch.full((1, 3, 2, 3), 0.1)
    label_s = torch.tensor([[[5, 5, 0], [IGNORE_INDEX, 5, 0]]])
    label_t = torch.tensor([[[1, 2, 3], [4, 6, 7]]])
    mixed, label, mask = classmix(source, label_s, target, label_t, classes=[5, 13], generator=torch.Generator())
    expected_mask = torch.tensor([[[True, True, False], [False, True, False]]])  # ceil(1/2) = 1 class: 5
    assert torch.equal(mask, expected_mask)
    assert torch.equal(label, torch.tensor([[[5, 5, 3], [4, 5, 7]]]))
    assert torch.allclose(mixed[0, :, 0, 0], torch.full((3,), 0.9)) and torch.allclose(mixed[0, :, 0, 2], torch.full((3,), 0.1))


def test_classmix_takes_half_of_the_classes_and_never_ignore():
    label = torch.tensor([0, 1, 2, 5, 8, IGNORE_INDEX]).repeat_interleave(4).view(1, 4, 6)
    for seed in range(8):
        _, mixed_label, mask = classmix(torch.zeros(1, 3, 4, 6), label, torch.ones(1, 3, 4, 6),
                                       torch.full_like(label, 18), list(range(19)), torch.Generator().manual_seed(seed))
        pasted = set(label[mask].tolist())
        assert len(pasted) == 3 and IGNORE_INDEX not in pasted  # ceil(5 / 2) of the 5 classes present
        assert torch.equal(mask, torch.isin(label, torch.tensor(sorted(pasted)))), "whole classes only"
        assert bool((mixed_label[~mask] == 18).all())


def test_confidence_weight_share_of_the_batch_by_hand():
    probs = torch.zeros(2, 2, 1, 4)
    probs[:, 0] = torch.tensor([[[0.99, 0.968, 0.5, 0.9]], [[0.97, 0.02, 0.2, 0.3]]])
    probs[:, 1] = 1 - probs[:, 0]
    # confident (max >= 0.968): 0.99, 0.968 | 0.97, 0.98 (class 1) -> 4 of 8 pixels
    weight = confidence_weight(probs, 0.968)
    assert torch.equal(weight, torch.full((2, 1, 4), 0.5))
    rows = torch.zeros(1, 2, 4, 2)
    rows[:, 0] = 1.0  # every pixel certain
    assert confidence_weight(rows, 0.968, ignore_top=1, ignore_bottom=2)[0, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_confidence_mask_keeps_the_pixels_the_share_counts_by_hand():
    probs = torch.zeros(2, 2, 1, 4)
    probs[:, 0] = torch.tensor([[[0.99, 0.968, 0.5, 0.9]], [[0.97, 0.02, 0.2, 0.3]]])
    probs[:, 1] = 1 - probs[:, 0]
    label = probs.argmax(dim=1)
    masked = confidence_mask(label, probs, 0.968)
    assert masked.tolist() == [[[0, 0, IGNORE_INDEX, IGNORE_INDEX]], [[0, 1, IGNORE_INDEX, IGNORE_INDEX]]]
    kept = (masked != IGNORE_INDEX).float().mean()
    assert kept == confidence_weight(probs, 0.968)[0, 0, 0]  # the same pixels DACS's q counts
    assert torch.equal(confidence_mask(label, probs, 0.0), label)


def test_pixel_weighted_ce_is_mmseg_mean_by_hand():
    logits = torch.zeros(1, 2, 1, 4)  # CE = ln 2 on every pixel
    label = torch.tensor([[[0, 1, IGNORE_INDEX, 0]]])
    weight = torch.tensor([[[1.0, 0.5, 1.0, 0.25]]])
    assert float(pixel_weighted_ce(logits, label, weight)) == pytest.approx(math.log(2) * (1 + 0.5 + 0 + 0.25) / 4)
    assert float(pixel_weighted_ce(logits, label)) == pytest.approx(math.log(2))  # mean over labelled pixels


def test_mix_augment_is_seeded_and_identity_when_off():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = mix_augment(x, torch.Generator().manual_seed(3))
    b = mix_augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, x) and 0 <= float(a.min()) and float(a.max()) <= 1
    off = mix_augment(x, torch.Generator().manual_seed(3), MixAugmentConfig(jitter_p=0.0, blur_p=0.0))
    assert torch.allclose(off, x, atol=1e-6)


def test_fourier_style_moves_the_low_frequencies_only_by_hand():
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2  # the highest frequency only
    x = (0.2 + 0.2 * checker).float().expand(1, 3, 8, 8)  # mean 0.3 + 0.1 * (+-1)
    style = torch.tensor([0.7, 0.5, 0.1]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    out = fourier_style(x, style, beta=0.125)  # b = 1: DC and the +-1 frequencies, not the checkerboard
    expected = torch.tensor([0.7, 0.5, 0.1]).view(1, 3, 1, 1) + 0.1 * (2 * checker.float() - 1)
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-6)
    assert torch.equal(fourier_style(x, style, beta=0.1), x)  # floor(0.1 * 8) = 0: unchanged
    with pytest.raises(ValueError, match="equal shapes"):
        fourier_style(x, style[..., :4], beta=0.125)


def test_region_jitter_by_hand():
    """Each region gets its own factors; ignore pixels stay; brightness 0.5 and saturation 0 give half the
    grey of the pixel (torchvision's weights) whatever the order."""
    x = torch.tensor([[0.8, 0.2], [0.4, 0.9]]).view(1, 1, 2, 2) * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    regions = torch.tensor([[[0, 0], [1, IGNORE_INDEX]]])
    grey = RegionJitterConfig(brightness=(0.5, 0.5), contrast=(1.0, 1.0), saturation=(0.0, 0.0), hue=0.0)
    out = region_jitter(x, regions, torch.Generator().manual_seed(0), grey)
    luma = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    expected = (0.5 * luma).unsqueeze(1).expand(1, 3, 2, 2).clone()
    expected[..., 1, 1] = x[..., 1, 1]
    assert torch.allclose(out, expected, atol=1e-4)
    flat = torch.full((1, 3, 4, 4), 0.5)
    two = torch.tensor([[0, 0, 1, 1]]).expand(4, 4)[None]
    bright = RegionJitterConfig(brightness=(0.5, 1.5), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
    a = region_jitter(flat, two, torch.Generator().manual_seed(1), bright)
    assert torch.equal(a, region_jitter(flat, two, torch.Generator().manual_seed(1), bright))
    left, right = a[0, 0, :, :2].unique(), a[0, 0, :, 2:].unique()
    assert len(left) == 1 and len(right) == 1 and abs(float(left) - float(right)) > 1e-3  # one factor per region
    with pytest.raises(ValueError, match="regions"):
        region_jitter(flat, two[..., :3], torch.Generator())


def test_region_jitter_never_waits_for_the_device():
    """No data-dependent op (boolean-mask indexing, nonzero) in the per-region loop: on a GPU each one waits
    for the device. The region ids come to the host once per batch (one ``unique`` per image there)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__
            if name.startswith(("index.", "index_put")) and any(i is not None and i.dtype == torch.bool
                                                                 for i in args[1]):
                name = "bool-mask " + name  # integer indices (torchvision's hue gather) do not wait
            self.names.append(name)
            return func(*args, **(kwargs or {}))

    regions = torch.tensor([[0, 0, 1, 1], [2, 2, 1, IGNORE_INDEX]]).expand(2, 2, 4).clone()
    with Ops() as ops:
        region_jitter(torch.rand(2, 3, 2, 4), regions, torch.Generator().manual_seed(0))
    assert not [n for n in ops.names if n.startswith(("nonzero", "bool-mask", "masked_select"))]
    assert sum(n.startswith("_unique") or n.startswith("unique") for n in ops.names) == 2  # once per image


# --------------------------------------------------------------------------------------------- DAFormer
def test_rare_class_probabilities_by_hand():
    probs = rcs_probabilities(torch.tensor([50.0, 30.0, 20.0, 0.0]), temperature=0.1)
    e = torch.tensor([math.exp(5.0), math.exp(7.0), math.exp(8.0)], dtype=torch.float64)  # (1 - f) / T
    assert torch.allclose(probs[:3], e / e.sum()) and probs[3] == 0  # an absent class is never drawn
    assert probs[:3].tolist() == pytest.approx([0.035119, 0.259496, 0.705385], abs=1e-6)
    sharp = rcs_probabilities(torch.tensor([0.6, 0.3, 0.1]), temperature=0.01)
    assert float(sharp[2]) == pytest.approx(1 / (1 + math.exp(-20) + math.exp(-50)))


class CountsDataset(torch.utils.data.Dataset):
    """Image i is filled with class i % 3, with i % 3 + 1 pixels of class 9 in its first row."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        label = torch.full((4, 4), i % 3, dtype=torch.long)
        label[0, : i % 3 + 1] = 9
        return {"image": torch.rand(3, 4, 4), "label": label, "index": i}


def test_rare_class_sampling_draws_by_class_and_is_a_function_of_the_position():
    data = CountsDataset()
    counts = torch.stack([torch.bincount(data[i]["label"].flatten(), minlength=19) for i in range(6)])
    rcs = RareClassSampling(data, counts, temperature=0.05, min_pixels=2)
    assert set(rcs.samples[9].tolist()) == {1, 2, 4, 5}  # images with >= 2 pixels of class 9
    gen = torch.Generator().manual_seed(0)
    drawn = [rcs.draw(gen) for _ in range(2000)]
    share_9 = sum(c == 9 for c, _ in drawn) / len(drawn)
    assert float(rcs.probs[9]) > 0.85 and share_9 == pytest.approx(float(rcs.probs[9]), abs=0.03)
    assert all(i in rcs.samples[c].tolist() for c, i in drawn)
    streams = StepStreams({"source": rcs}, seed=0)
    assert [streams[p]["source"]["index"] for p in range(6)] == [streams[p]["source"]["index"] for p in range(6)]


def test_downscale_label_ratio_and_feature_distance_by_hand():
    label = torch.tensor([[[3, 3, 1, 1],
                           [3, 3, 1, 2],
                           [4, 5, 255, 255],
                           [5, 4, 255, 255]]])
    out = downscale_label_ratio(label, 2, 0.75, 19)
    assert out.tolist() == [[[3, 1], [IGNORE_INDEX, IGNORE_INDEX]]]  # 3/4 of class 1 passes, 2/4 does not
    features = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # [1, 2, 1, 2]: pixel norms 5 and 1
    reference = torch.zeros_like(features)
    assert float(masked_feature_distance(features, reference)) == pytest.approx(3.0)
    assert float(masked_feature_distance(features, reference, torch.tensor([[[True, False]]]))) == pytest.approx(5.0)
    assert float(masked_feature_distance(features, reference, torch.zeros(1, 1, 2, dtype=torch.bool))) == 0.0


# --------------------------------------------------------------------------------------------- MIC
def test_mic_mask_ratio_patch_alignment_and_seed():
    mask = block_mask((4, 320, 320), 16, 0.7, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1, 320, 320) and set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.view(4, 1, 20, 16, 20, 16)
    assert bool((blocks == blocks[:, :, :, :1, :, :1]).all()), "constant inside each 16x16 patch"
    assert 1 - float(mask.mean()) == pytest.approx(0.7, abs=0.04)  # 1600 patches
    assert torch.equal(mask, block_mask((4, 320, 320), 16, 0.7, torch.Generator().manual_seed(0)))
    assert not torch.equal(mask, block_mask((4, 320, 320), 16, 0.7, torch.Generator().manual_seed(1)))
    edge = block_mask((1, 20, 20), 16, 0.5, torch.Generator().manual_seed(0))
    assert bool((edge[..., 16:, :16] == edge[..., 16, 0]).all())  # the partial patch at the border is one patch
    assert float(block_mask((2, 8, 8), 4, 0.0, torch.Generator()).min()) == 1.0


# --------------------------------------------------------------------------------------------- HRDA
def test_hrda_detail_box_geometry():
    boxes = {detail_box((128, 96), (64, 32), 16, torch.Generator().manual_seed(s)) for s in range(200)}
    assert {y1 for y1, _, _, _ in boxes} == {0, 16, 32, 48}  # HRDA: randint((64 + 1) // 16) * 16
    assert {x1 for _, _, x1, _ in boxes} == {0, 16, 32, 48}
    assert all(y2 - y1 == 64 and x2 - x1 == 32 for y1, y2, x1, x2 in boxes)
    assert detail_box((64, 64), (64, 64), 8) == (0, 64, 0, 64)
    with pytest.raises(ValueError, match="larger"):
        detail_box((32, 32), (64, 16))


def test_hrda_scale_attention_fusion_by_hand():
    context = torch.full((1, 2, 4, 4), 2.0)
    attention = torch.full((1, 2, 4, 4), 0.25)
    detail = torch.full((1, 2, 2, 2), 4.0)
    fused = fuse_scales(context, attention, detail, (1, 3, 1, 3))
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 1:3] = True
    assert bool((fused[:, :, inside] == 0.75 * 2 + 0.25 * 4).all())  # (1 - a) * context + a * detail
    assert bool((fused[:, :, ~inside] == 2.0).all())  # no detail prediction: the context alone
    assert torch.equal(fuse_scales(context, attention, torch.full((1, 2, 4, 4), 4.0)), torch.full((1, 2, 4, 4), 2.5))


def test_hrda_network_shapes_and_sliding_detail(one_torch_thread):
    torch.manual_seed(0)
    net = hrda(19, False, "pspnet_nano", 0.5, [32, 32], [16, 16]).eval()
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        context, attention, _ = net.context(x)
        fused = net(x)
    assert context.shape == attention.shape == (1, 19, 48, 64) and 0 < float(attention.min()) < float(attention.max()) < 1
    assert fused.shape == (1, 19, 48, 64)
    # the sliding detail windows (32x32, stride 16) cover every pixel: no zero-count division anywhere
    assert bool(torch.isfinite(fused).all())
    assert net.config["name"] == "nightseg.models.hrda:hrda" and net.config["detail_crop"] == [32, 32]
    average = hrda(19, False, "pspnet_nano", 0.5, [32, 32], [16, 16], attention="average").eval()
    with torch.no_grad():
        _, fixed, _ = average.context(x)
    assert bool((fixed == 0.5).all()) and not any(q.requires_grad for q in average.attention.parameters())


# --------------------------------------------------------------------------------------------- recipes
@pytest.fixture(scope="module")
def relight_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("relight") / "dce.safetensors"
    save_dce_weights(DCENet(generator=torch.Generator().manual_seed(0)), path)
    return path


def recipe_config(name: str, root: Path, relight: Path, extra: tuple | list = (), **train):
    """The CPU config of `name` on the tiny synthetic set: pspnet_nano, 48x48 crops, one thread."""
    overrides = [f"data.root={root}", "data.workers=0", "model.name=pspnet_nano",
                 "data.source.crop=[48,48]", "data.source.scale=[1.0,1.0]", "data.target.crop=[48,64]",
                 "data.target.scale=[1.0,1.0]", "train.progress=false", "train.log_every=1", "train.cpu_threads=1",
                 "train.max_steps=2", "train.val_every=0", "train.state_every=100"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    overrides += list(extra)
    if name == "hrda":
        overrides += ["method.multi_resolution.detail_crop=[32,32]", "method.multi_resolution.detail_stride=[16,16]"]
    if name == "mic":  # weight 1: an untrained teacher has no pixel above 0.968, so q = 0 would hide the term
        overrides += ["method.masking.patch=8", "method.pseudo_label.confidence_weight=false"]
    if name == "ulca_st":
        overrides += [f"method.relight.weights={relight}"]
    if name in ("daformer", "mic", "hrda"):
        overrides += ["data.source.options.min_pixels=1", "data.source.options.progress=false"]
    return load_config(REPO / "configs" / "cpu" / f"{name}.yaml", overrides)


def csv_losses(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "csv" / "metrics.csv").open(newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("train/loss")]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps_with_finite_losses(name, tmp_path, synthetic_set, relight_file):
    from nightseg.engine import train

    cfg = recipe_config(name, synthetic_set(COUNTS), relight_file)
    metrics = train(cfg, tmp_path / "run")
    assert metrics["finished"] and metrics["step"] == 2
    rows = csv_losses(tmp_path / "run")
    assert len(rows) == 2
    expected = {"dacs": "train/mix", "daformer": "train/mix", "mic": "train/masked", "hrda": "train/mix",
                "ulca_st": "train/st"}[name]
    for row in rows:
        assert math.isfinite(float(row["train/loss"])) and float(row["train/loss"]) > 0
        assert math.isfinite(float(row[expected])) and float(row[expected]) > 0
    assert [float(r["train/alpha"]) for r in rows] == [0.0, 0.5]  # the teacher's warm-up, step 0 and 1
    state = load_file(str(next((tmp_path / "run" / "state").glob("*.safetensors"))))
    teacher = [k for k in state if "teacher.net." in k]
    assert teacher, "the teacher is part of the training state"
    last = load_file(str(tmp_path / "run" / "checkpoints" / "last.safetensors"))
    assert not any(k.startswith("teacher.") for k in last)  # exported checkpoints hold the student only
    if name == "hrda":  # the checkpoint rebuilds HRDA's network (context, detail and attention) for inference
        from nightseg.core.checkpoint import load_checkpoint, load_state_into
        from nightseg.models.registry import model_from_config

        path = tmp_path / "run" / "checkpoints" / "last.safetensors"
        tensors, meta = load_checkpoint(path)
        net = model_from_config(meta["model"], path)
        load_state_into(net, tensors, path)
        assert net.config["segmenter"] == "pspnet_nano" and any(k.startswith("attention.") for k in tensors)


def test_ulca_st_fda_paste_changes_only_the_teacher_term(tmp_path, synthetic_set, relight_file):
    """paste_style=fda night-styles the pasted objects of L_st's NightMix and nothing else: same draws, so L_seg
    and the teacher's confidence weight of step 0 are equal to the default's, L_st is not."""
    from nightseg.engine import train

    data = synthetic_set(COUNTS)
    rows = {}
    for style in ("day", "fda"):
        cfg = recipe_config("ulca_st", data, relight_file, extra=[f"method.self_training.paste_style={style}"])
        assert cfg.method.self_training.paste_style == style
        train(cfg, tmp_path / style)
        rows[style] = csv_losses(tmp_path / style)[0]
    day, fda = rows["day"], rows["fda"]
    assert float(day["train/seg"]) == pytest.approx(float(fda["train/seg"]), abs=1e-6)
    assert float(day["train/pl_weight"]) == pytest.approx(float(fda["train/pl_weight"]), abs=1e-6)
    assert abs(float(day["train/st"]) - float(fda["train/st"])) > 1e-4


def test_ulca_st_translate_paste_renders_the_pasted_objects_with_the_day2night_generator(
        tmp_path, synthetic_set, relight_file, monkeypatch):
    """paste_style=translate pastes G_day2night(A): with a trained generator only L_st changes (same draws, so
    L_seg and the teacher's weight of step 0 are the default's); with the generator replaced by the identity,
    L_st is exactly the default's, so nothing else in the step depends on the switch. The generator is frozen
    and stays out of the exported checkpoint; a missing translator is one line naming the key."""
    import nightseg.methods.ulca_st as ulca_st
    from nightseg.core.errors import UserError
    from nightseg.engine import train
    from nightseg.pipelines.translation import CycleGAN, TranslatorSettings, save_translator

    data = synthetic_set(COUNTS)
    settings = TranslatorSettings(steps=1, channels=4, blocks=1, disc_channels=4, seed=0)
    path = save_translator(CycleGAN(settings), tmp_path / "translator.safetensors", settings, {"steps_done": 0})
    translate = ["method.self_training.paste_style=translate", f"method.self_training.translator={path}"]
    rows = {}
    for name, extra in (("day", ["method.self_training.paste_style=day"]), ("translate", translate)):
        train(recipe_config("ulca_st", data, relight_file, extra=extra), tmp_path / name)
        rows[name] = csv_losses(tmp_path / name)[0]
    day, translated = rows["day"], rows["translate"]
    assert float(day["train/seg"]) == pytest.approx(float(translated["train/seg"]), abs=1e-6)
    assert float(day["train/pl_weight"]) == pytest.approx(float(translated["train/pl_weight"]), abs=1e-6)
    assert abs(float(day["train/st"]) - float(translated["train/st"])) > 1e-4
    exported = load_file(str(tmp_path / "translate" / "checkpoints" / "last.safetensors"))
    assert not any(k.startswith("translator.") for k in exported)

    monkeypatch.setattr(ulca_st, "load_translator", lambda *_: nn.Identity())
    train(recipe_config("ulca_st", data, relight_file, extra=translate), tmp_path / "identity")
    identity = csv_losses(tmp_path / "identity")[0]
    assert float(identity["train/st"]) == pytest.approx(float(day["train/st"]), abs=1e-6)

    with pytest.raises(UserError, match="method.self_training.translator"):
        ulca_st.build(recipe_config("ulca_st", data, relight_file, extra=translate[:1]))
    with pytest.raises(UserError, match="method.self_training.always_paste: unknown class 'buss'"):
        ulca_st.build(recipe_config("ulca_st", data, relight_file, extra=["method.self_training.always_paste=[buss]"]))


def test_ulca_st_jitter_paste_changes_only_the_pasted_objects_and_no_other_draw(tmp_path, synthetic_set, relight_file):
    """paste_style=jitter colour-jitters each class of the relit A with its own generator: only L_st changes
    (L_seg and the teacher's weight of step 0 are the default's), and with every range at the identity
    (factors 1, hue 0) L_st is exactly the default's, so the switch draws nothing from the step's generator.
    always_paste (every class here) reaches NightMix: more of A is pasted, so only L_st and the mixed share
    change."""
    from nightseg.core.classes import CLASS_NAMES
    from nightseg.engine import train

    data = synthetic_set(COUNTS)
    first = ["method.self_training.paste_style=day", "method.self_training.always_paste=[]"]  # the first design
    jitter = [*first, "method.self_training.paste_style=jitter"]
    identity = [*jitter, "method.self_training.paste_jitter={brightness: [1, 1], contrast: [1, 1], "
                "saturation: [1, 1], hue: 0.0}"]
    always = [*first, f"method.self_training.always_paste=[{', '.join(CLASS_NAMES)}]"]
    rows = {}
    for name, extra in (("day", first), ("jitter", jitter), ("identity", identity), ("always", always)):
        train(recipe_config("ulca_st", data, relight_file, extra=extra), tmp_path / name)
        rows[name] = csv_losses(tmp_path / name)[0]
    day, jittered = rows["day"], rows["jitter"]
    assert float(day["train/seg"]) == pytest.approx(float(jittered["train/seg"]), abs=1e-6)
    assert float(day["train/pl_weight"]) == pytest.approx(float(jittered["train/pl_weight"]), abs=1e-6)
    assert abs(float(day["train/st"]) - float(jittered["train/st"])) > 1e-5
    assert float(rows["identity"]["train/st"]) == pytest.approx(float(day["train/st"]), abs=1e-7)
    everything = rows["always"]
    assert float(everything["train/seg"]) == pytest.approx(float(day["train/seg"]), abs=1e-6)
    assert float(everything["train/mix_share"]) > float(day["train/mix_share"]) > 0.0
    assert abs(float(everything["train/st"]) - float(day["train/st"])) > 1e-5


def test_ulca_st_pixel_weighting_trains_only_the_confident_teacher_pixels(tmp_path, synthetic_set, relight_file):
    """weighting=pixel keeps the teacher's label where its confidence is >= threshold (weight 1) and ignores the
    rest; weighting=share trains every pixel at q. With threshold 0 every pixel is confident (q = 1), so the two
    give the same L_st; at 0.07 (about half of the untrained teacher's pixels above) they log the same confident share but train different losses; L_seg never moves."""
    from nightseg.engine import train

    data = synthetic_set(COUNTS)
    rows = {}
    for name, threshold, weighting in (("share0", 0.0, "share"), ("pixel0", 0.0, "pixel"),
                                       ("share", 0.07, "share"), ("pixel", 0.07, "pixel")):
        extra = [f"method.self_training.threshold={threshold}", f"method.self_training.weighting={weighting}"]
        train(recipe_config("ulca_st", data, relight_file, extra=extra), tmp_path / name)
        rows[name] = csv_losses(tmp_path / name)[0]
    assert float(rows["pixel0"]["train/st"]) == pytest.approx(float(rows["share0"]["train/st"]), abs=1e-7)
    assert float(rows["pixel0"]["train/pl_weight"]) == float(rows["share0"]["train/pl_weight"]) == 1.0
    share, pixel = rows["share"], rows["pixel"]
    assert float(pixel["train/seg"]) == pytest.approx(float(share["train/seg"]), abs=1e-6)
    assert float(pixel["train/pl_weight"]) == pytest.approx(float(share["train/pl_weight"]), abs=1e-6)
    assert 0.0 < float(share["train/pl_weight"]) < 1.0
    assert abs(float(pixel["train/st"]) - float(share["train/st"])) > 1e-5


def test_validation_scores_the_teachers_pseudo_labels_per_class(tmp_path, synthetic_set, relight_file):
    """metrics.json's history holds the teacher's per-class accuracy (recall) on night val, equal to the teacher
    weights of the training state run on the val images and counted by hand."""
    import json

    from nightseg.data.registry import build_dataset
    from nightseg.engine import train
    from nightseg.evaluation.exposure import masked_label
    from nightseg.models.registry import build_model

    root = synthetic_set(COUNTS)
    cfg = recipe_config("dacs", root, relight_file, max_steps=1, val_every=1)
    train(cfg, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [1] and "per_class_iou" in history[0]
    teacher = build_model(cfg.model)
    state = state_tensors(tmp_path / "run")
    teacher.load_state_dict({k.split("teacher.net.", 1)[1]: v for k, v in state.items() if "teacher.net." in k})
    teacher.eval()
    hits, pixels = torch.zeros(19), torch.zeros(19)
    val = build_dataset("dark_zurich", root / "dark_zurich", "val")
    for sample in (val[i] for i in range(len(val))):  # __getitem__ wraps around: no IndexError to stop a for
        image = sample["image"][None]
        with torch.no_grad():
            label = teacher(image).argmax(dim=1)[0]
        truth = masked_label({k: v[None] for k, v in sample.items() if k in ("label", "invalid")})[0]
        for c in range(19):
            here = truth == c
            pixels[c] += here.sum()
            hits[c] += (label[here] == c).sum()
    logged = history[0]["teacher_accuracy"]
    for c, name in enumerate(CLASS_NAMES):
        if pixels[c] == 0:
            assert logged[name] is None  # not in the ground truth: NaN, stored as None
        else:
            assert logged[name] == pytest.approx(float(hits[c] / pixels[c]), abs=1e-6), name
    assert (pixels > 0).sum() >= 3  # several classes are scored


def test_daformer_feature_distance_off_without_imagenet_and_on_with_an_encoder(tmp_path, synthetic_set,
                                                                               relight_file, caplog, one_torch_thread):
    from nightseg.methods.daformer import DAFormer

    cfg = recipe_config("daformer", synthetic_set(COUNTS), relight_file)
    with caplog.at_level(logging.WARNING, logger="nightseg.train"):
        module = DAFormer(cfg)
    assert module.imnet is None and "feature distance off" in caplog.text and len(caplog.records) == 1
    groups = module.param_groups()
    encoder = {id(q) for q in module.model.backbone.parameters()}
    assert all(g["lr_mult"] == (1.0 if id(g["params"][0]) in encoder else 10.0) for g in groups)
    norm = [g for g in groups if g.get("weight_decay") == 0.0]
    assert norm and all(q.dim() == 1 for g in norm for q in g["params"])
    torch.manual_seed(0)
    module.enable_feature_distance(ResNetBackbone(18, output_stride=8, stages=2))  # other weights: no download
    x = torch.rand(2, 3, 48, 48)
    label = torch.full((2, 48, 48), 13)  # car: a thing class
    features = module.model.encode(x)[-1]
    fd = module.feature_distance(x, features, label)
    assert float(fd.detach()) > 0 and fd.requires_grad
    label[:] = 0  # road is no thing class: nothing to compare
    assert float(module.feature_distance(x, features, label).detach()) == 0.0


def state_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted((run / "state").glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return {k: v for k, v in tensors.items() if "teacher" in k or "model" in k}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("hrda", "ulca_st") else n
                                  for n in RECIPES])
def test_stop_and_resume_gives_identical_student_and_teacher(name, tmp_path, synthetic_set, relight_file):
    import os
    import signal

    import lightning as L

    from nightseg.engine import train

    class SendSigterm(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    root = synthetic_set(COUNTS)
    cfg = recipe_config(name, root, relight_file, max_steps=5)
    train(cfg, tmp_path / "straight")
    stopped = train(recipe_config(name, root, relight_file, max_steps=5), tmp_path / "run", callbacks=[SendSigterm()])
    assert stopped["interrupted"] and stopped["step"] == 3  # the step after the signal finishes, then it stops
    resumed = train(recipe_config(name, root, relight_file, max_steps=5), tmp_path / "run", resume=True)
    assert resumed["finished"] and resumed["step"] == 5
    a, b = state_tensors(tmp_path / "straight"), state_tensors(tmp_path / "run")
    assert any("teacher" in k for k in a) and sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert [r["train/loss"] for r in csv_losses(tmp_path / "run")] == [r["train/loss"] for r in csv_losses(tmp_path / "straight")]


def test_configs_load_with_the_papers_settings():
    dacs, daformer = load_config(REPO / "configs/dacs.yaml"), load_config(REPO / "configs/daformer.yaml")
    assert dacs.method.teacher.alpha == 0.99 and dacs.method.pseudo_label.threshold == 0.968
    assert daformer.method.teacher.alpha == 0.999 and daformer.model.name == "daformer_mitb5"
    assert daformer.optim.warmup_steps == 1500 and daformer.method.head_lr_mult == 10
    assert daformer.data.source.options["temperature"] == 0.01
    mic = load_config(REPO / "configs/mic.yaml")
    assert (mic.method.masking.patch, mic.method.masking.ratio, mic.method.masking.weight) == (64, 0.7, 1.0)
    hr = load_config(REPO / "configs/hrda.yaml")
    assert hr.data.source.crop == [1024, 1024] and hr.method.multi_resolution.detail_crop == [512, 512]
    st = load_config(REPO / "configs/cpu/ulca_st.yaml", ["method.self_training.input=night"])
    assert st.method.self_training.input == "night" and st.method.teacher.alpha == 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dacs", "daformer", "mic", "hrda"])
def test_kill_and_resume_gives_identical_student_and_teacher(name, tmp_path, run_cli, monkeypatch):
    """Uninterrupted run vs. a subprocess SIGKILLed mid-run (after its step-4 state) and resumed, as
    tests/test_engine.py does for the supervised recipe; the teacher is part of what must match."""
    import json
    import signal
    import subprocess
    import sys

    import yaml

    from nightseg.core.config import config_from_dict
    from nightseg.engine import train

    tests = Path(__file__).resolve().parent
    monkeypatch.syspath_prepend(str(tests))
    from test_engine import KILL_ENV, cli_env

    method: dict = {"name": name}
    if name == "mic":
        method["masking"] = {"patch": 8}
    if name == "hrda":
        method["multi_resolution"] = {"detail_crop": [16, 16], "detail_stride": [8, 8], "divisible": 8}
    recipe = {
        "method": method, "seed": 3,
        "data": {"root": ".", "batch_size": 2, "workers": 0,
                 "source": {"dataset": "test_engine:tiny_dataset", "flip": True},
                 "target": {"dataset": "test_engine:tiny_dataset", "options": {"dark": True}, "flip": True}},
        "model": {"name": "pspnet_nano"}, "optim": {"lr": 0.05},
        "train": {"max_steps": 8, "val_every": 0, "state_every": 2, "log_every": 1, "accelerator": "cpu",
                  "progress": False, "cpu_threads": 1},
    }
    straight = tmp_path / "straight"
    train(config_from_dict(recipe, "tiny"), straight)

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(recipe))
    killed = tmp_path / "killed"
    env = cli_env()
    env[KILL_ENV] = str(4 * 6)  # 2 streams x 2 samples per step (+1 prefetched batch): dies around step 5
    proc = subprocess.run([sys.executable, "-m", "nightseg.cli", "train", "--config", str(config), "--out",
                           str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert json.loads((killed / "state" / "state.json").read_text())["step"] == 4
    result = run_cli("train", "--out", killed, "--resume")
    assert result.code == 0, result.err
    a, b = state_tensors(straight), state_tensors(killed)
    assert any("teacher" in k for k in a) and sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after kill and resume"


def test_benchmark_report_gap_shares_and_dynamic_classes_by_hand():
    """bench/synthetic_benchmark.py's issue-20 lines: each seed's share of its own source-to-oracle gap, and
    the dynamic classes a row leaves at or below the source model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_benchmark", REPO / "bench" / "synthetic_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def scores(miou: float, car: float, bus: float) -> dict:
        return {"night": {"mIoU": miou, "per_class": {"car": {"iou": car}, "bus": {"iou": bus}}}}

    results = {"source_only": {0: scores(0.10, 0.5, 0.1), 1: scores(0.20, 0.5, 0.1)},
               "oracle": {0: scores(0.30, 0.8, 0.5), 1: scores(0.40, 0.8, 0.5)},
               "dacs": {0: scores(0.25, 0.6, 0.1), 1: scores(0.25, 0.7, 0.0)}}
    assert bench.gap_closed_per_seed(results, "dacs") == pytest.approx([75.0, 25.0])  # 0.15/0.2, 0.05/0.2
    report = bench.self_training_targets(results)
    # means: source 0.15, oracle 0.35, dacs 0.25 -> 50 % of the mean gap; bus 5.0 <= 10.0, car 65 > 50
    assert "dacs: +10.0 mIoU, 50 % of the gap closed (per seed: 75, 25 %)" in report
    assert "dynamic classes not above source: bus 5.0 <= 10.0" in report
    assert "best recipe dacs closes 50 %" in report


def test_benchmark_rows_load_with_their_overrides():
    """Every row of bench/synthetic_benchmark.py loads from its config with its overrides (a wrong key would
    otherwise stop a benchmark only when that row starts), and the combined rows set both of their switches."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic_benchmark", REPO / "bench" / "synthetic_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for row, (config, _) in bench.ROWS.items():
        load_config(REPO / "configs" / config, bench.ROW_OVERRIDES.get(row, []))
    both = load_config(REPO / "configs" / bench.ROWS["ulca_st_teacher_jitter"][0],
                       bench.ROW_OVERRIDES["ulca_st_teacher_jitter"]).method.self_training
    assert (both.label, both.paste_style) == ("teacher", "jitter")
    pixel = load_config(REPO / "configs" / bench.ROWS["ulca_st_jitter_pixel"][0],
                        bench.ROW_OVERRIDES["ulca_st_jitter_pixel"]).method.self_training
    assert (pixel.weighting, pixel.paste_style, pixel.label) == ("pixel", "jitter", "teacher_dannet")
    slow = load_config(REPO / "configs" / bench.ROWS["ulca_st_jitter_slow"][0], bench.ROW_OVERRIDES["ulca_st_jitter_slow"])
    assert (slow.method.teacher.alpha, slow.method.self_training.paste_style) == (0.999, "jitter")
    always = load_config(REPO / "configs" / bench.ROWS["ulca_st_jitter_always"][0],
                         bench.ROW_OVERRIDES["ulca_st_jitter_always"]).method.self_training
    assert always.always_paste == ["person", "rider", "bus", "train", "motorcycle", "bicycle"]
    assert always.paste_style == "jitter"
    # ulca_st's default is the measured best (jitter, the six dynamic classes always pasted), the same in
    # the GPU config, the CPU config and the code; the benchmark's ulca_st rows keep the first design
    from nightseg.methods.ulca_st import ALWAYS_PASTED, SelfTrainingParams

    assert ALWAYS_PASTED == ("person", "rider", "bus", "train", "motorcycle", "bicycle")
    code = SelfTrainingParams()
    for config in ("ulca_st.yaml", "cpu/ulca_st.yaml"):
        default = load_config(REPO / "configs" / config).method.self_training
        assert (default.label, default.paste_style, default.always_paste) == ("teacher_dannet", "jitter",
                                                                              list(ALWAYS_PASTED))
        assert (default.paste_style, default.always_paste) == (code.paste_style, code.always_paste)
    first = load_config(REPO / "configs" / bench.ROWS["ulca_st"][0], bench.ROW_OVERRIDES["ulca_st"]).method
    assert (first.self_training.paste_style, first.self_training.always_paste) == ("day", [])
    assert all(bench.ROW_OVERRIDES[row][:2] == bench.ULCA_ST_FIRST_DESIGN for row in bench.ROWS
               if row.startswith("ulca_st"))
    rcs = load_config(REPO / "configs" / bench.ROWS["ulca_st_rcs_jitter"][0], bench.ROW_OVERRIDES["ulca_st_rcs_jitter"])
    assert rcs.data.source.dataset == "nightseg.data.rare_class:rare_class_sampling"
    assert rcs.data.source.options["temperature"] == 0.01



def test_gpu_benchmark_pack_carries_the_converged_models(tmp_path):
    """bench/synthetic_benchmark_gpu.sh pack: each seed's converged source (``source_longer``) becomes the
    ``source_only`` run the fine-tunes start from, with its checkpoint; the converged oracle becomes ``oracle``
    without one (only its scores are read); a missing base model stops it with exit 2 and the fix."""
    import subprocess

    source, carry = tmp_path / "runs", tmp_path / "carry"
    (source / "relight").mkdir(parents=True)
    (source / "relight" / "zero_dce.safetensors").write_bytes(b"dce")
    for seed in (0, 1, 2):
        for row in ("source_longer", "oracle_longer", "source_only"):
            run = source / f"{row}_seed{seed}"
            (run / "checkpoints").mkdir(parents=True)
            for name in ("scores.json", "metrics.json", "config.yaml"):
                (run / name).write_text(f"{row} {seed} {name}")
            for name in ("last.safetensors", "last.json"):
                (run / "checkpoints" / name).write_text(f"{row} {seed} {name}")
    script = REPO / "bench" / "synthetic_benchmark_gpu.sh"
    env = {"PATH": "/usr/bin:/bin", "SOURCE": str(source), "CARRY": str(carry)}
    done = subprocess.run(["bash", str(script), "pack"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (carry / "source_only_seed2" / "checkpoints" / "last.safetensors").read_text() == \
        "source_longer 2 last.safetensors"
    assert (carry / "oracle_seed1" / "scores.json").read_text() == "oracle_longer 1 scores.json"
    assert not (carry / "oracle_seed1" / "checkpoints" / "last.safetensors").exists()
    assert (carry / "relight" / "zero_dce.safetensors").read_bytes() == b"dce"
    (source / "oracle_longer_seed1" / "scores.json").unlink()
    failed = subprocess.run(["bash", str(script), "pack"], env=env, capture_output=True, text=True)
    assert failed.returncode == 2
    assert f"{source}/oracle_longer_seed1/scores.json missing" in failed.stderr

def test_paste_appearance_statistics_by_hand():
    """bench/paste_appearance.py: a class's mean HSV value, saturation and |Laplacian| over its pixels, one-pixel
    border left out, computed by hand on a 4x4 image whose inner 2x2 is one car pixel and three bus pixels."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paste_appearance", REPO / "bench" / "paste_appearance.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    image = torch.zeros(1, 3, 4, 4)
    image[0, :, 1, 1] = torch.tensor([0.8, 0.4, 0.2])  # the car pixel: V 0.8, S (0.8 - 0.2) / 0.8 = 0.75, grey 1.4/3
    label = torch.full((1, 4, 4), CLASS_NAMES.index("bus"))
    label[0, 1, 1] = CLASS_NAMES.index("car")
    stats = bench.appearance(image, label)
    grey = 1.4 / 3
    assert stats["car"] == pytest.approx({"value": 0.8, "saturation": 0.75, "texture": 4 * grey, "pixels": 1})
    # bus pixels (1,2), (2,1), (2,2): black (V 0, S 0); (1,2) and (2,1) neighbour the car pixel, (2,2) does not
    assert stats["bus"] == pytest.approx({"value": 0.0, "saturation": 0.0, "texture": 2 * grey / 3, "pixels": 3})
    assert "road" not in stats
    # objects: per frame, classes with >= MIN_PIXELS pixels; two frames, one bus each (V 0.5 / S 0 and V 0.9 / S 0.5)
    frames = torch.zeros(2, 3, 5, 5)
    frames[0] = 0.5
    frames[1] = torch.tensor([0.9, 0.45, 0.45]).view(3, 1, 1)
    buses = torch.full((2, 5, 5), CLASS_NAMES.index("bus"))
    found = bench.objects(frames, buses)
    assert [v for pair in found["bus"] for v in pair] == pytest.approx([0.5, 0.0, 0.9, 0.5]) and found["car"] == []
    assert bench.night_like_share(found["bus"], (0.55, 0.05)) == 0.5  # only the first within 0.1 in V and S
    assert bench.night_like_share([], (0.5, 0.5)) is None


def test_pseudo_label_plot_means_over_seeds_and_draws_a_panel_per_score(tmp_path, monkeypatch):
    """bench/pseudo_label_plot.py: the curve of a class is the mean over the seed folders at each step, a
    missing (None) or NaN score is left out of the mean, and ``--key`` with both scores draws two panels."""
    import importlib.util
    import json
    import sys

    spec = importlib.util.spec_from_file_location("pseudo_label_plot", REPO / "bench" / "pseudo_label_plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    histories = {0: [{"step": 100, "teacher_accuracy": {"bus": 0.1, "car": 0.8},
                      "teacher_precision": {"bus": None, "car": 0.5}},
                     {"step": 200, "teacher_accuracy": {"bus": 0.3, "car": 0.9},
                      "teacher_precision": {"bus": 0.2, "car": 0.6}}],
                 1: [{"step": 100, "teacher_accuracy": {"bus": 0.0, "car": float("nan")},
                      "teacher_precision": {"bus": 0.4, "car": 0.7}},
                     {"step": 200, "teacher_accuracy": {"bus": 0.1, "car": 1.0},
                      "teacher_precision": {"bus": 0.6, "car": 0.8}}]}
    for seed, history in histories.items():
        (tmp_path / f"ulca_st_jitter_seed{seed}").mkdir()
        (tmp_path / f"ulca_st_jitter_seed{seed}" / "metrics.json").write_text(json.dumps({"history": history}))
    recall = plot.teacher_curves(tmp_path, "ulca_st_jitter")
    assert [s for s, _ in recall["bus"]] == [100, 200]
    assert [v for _, v in recall["bus"]] == pytest.approx([5.0, 20.0])
    assert [v for _, v in recall["car"]] == pytest.approx([80.0, 95.0])  # seed 1's NaN at step 100 left out
    precision = plot.teacher_curves(tmp_path, "ulca_st_jitter", "teacher_precision")
    assert [v for _, v in precision["bus"]] == pytest.approx([40.0, 40.0])  # seed 0's None at step 100 left out
    png = tmp_path / "teacher.png"
    figures = []
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, path, **_: figures.append((self, path)))
    monkeypatch.setattr(sys, "argv", ["pseudo_label_plot", str(tmp_path), "--rows", "ulca_st_jitter", "dacs",
                                      "--key", "teacher_accuracy", "teacher_precision", "--output", str(png)])
    plot.main()
    (figure, path), = figures
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible() and ax.get_title()]
    assert path == png
    assert titles == ["ULCA + mean teacher, paste jitter (2 seeds), recall",
                      "ULCA + mean teacher, paste jitter (2 seeds), precision"]  # no dacs folder: no panel


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_confidence_table_by_hand():
    """bench/teacher_confidence.py: kept share, accuracy of the kept labels, wrong labels removed, and per class
    the wrong labels kept and the right ones kept, counted by hand on six pixels (one ignored)."""
    table = _bench_module("teacher_confidence").threshold_table
    bus, car, road = CLASS_NAMES.index("bus"), CLASS_NAMES.index("car"), CLASS_NAMES.index("road")
    confidence = torch.tensor([0.99, 0.6, 0.95, 0.3, 0.8, 0.99])
    prediction = torch.tensor([bus, car, car, road, road, road])
    truth = torch.tensor([bus, bus, car, bus, road, IGNORE_INDEX])
    low, high = table(confidence, prediction, truth, (0.0, 0.7), ("bus", "car"))
    assert low["kept"] == 1.0 and low["accuracy"] == pytest.approx(3 / 5) and low["wrong_removed"] == 0.0
    # t = 0.7 keeps 0.99 (bus right), 0.95 (car right), 0.8 (road right); drops 0.6 and 0.3 (both bus wrong)
    assert high["kept"] == pytest.approx(3 / 5) and high["accuracy"] == 1.0 and high["wrong_removed"] == 1.0
    assert high["bus/wrong_kept"] == 0.0 and high["bus/right_kept"] == 1.0 and high["car/right_kept"] == 1.0
    assert math.isnan(high["car/wrong_kept"])  # no car pixel is labelled wrongly


def test_teacher_confidence_extracts_the_ema_teacher_of_a_run(tmp_path, synthetic_set, relight_file):
    """teacher_checkpoint writes the run's EMA teacher (state_dict/teacher.net.*) in place of the student's
    weights, loadable like any checkpoint; a run without a teacher stops with the reason."""
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.core.training_state import load_state, save_state
    from nightseg.engine import RunDir, train

    bench = _bench_module("teacher_confidence")
    run = tmp_path / "run"
    train(recipe_config("ulca_st", synthetic_set(COUNTS), relight_file), run)
    teacher, meta = load_checkpoint(bench.teacher_checkpoint(run, tmp_path / "teacher.safetensors"))
    student, _ = load_checkpoint(RunDir(run).last)
    state = load_state(run / "state")["state_dict"]
    head = next(k for k in student if k.endswith("weight") and student[k].ndim == 4)
    assert torch.equal(teacher[head], state[f"teacher.net.{head}"])
    assert not torch.equal(teacher[head], student[head])  # the EMA lags the student after the first step
    assert set(teacher) == set(student) and "EMA teacher" in meta["source"]
    state_only = tmp_path / "plain"
    (state_only / "checkpoints").mkdir(parents=True)
    for name in ("last.safetensors", "last.json"):
        (state_only / "checkpoints" / name).write_bytes((run / "checkpoints" / name).read_bytes())
    save_state({"state_dict": {"model.w": torch.zeros(1)}}, state_only / "state")
    with pytest.raises(SystemExit, match="no teacher weights"):
        bench.teacher_checkpoint(state_only, tmp_path / "none.safetensors")

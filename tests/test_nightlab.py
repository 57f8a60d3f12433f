"""NightLab: box derivation, HDM relabelling (Eq. 1-2), the merge (Sec. B), the RDN, and a tiny
end-to-end run whose checkpoint loads in `Predictor.from_checkpoint`."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nightseg.models.nightlab import (
    RDN,
    boxes_from_label,
    context_box,
    hdm_relabel,
    merge_logits,
    paste_regions,
    proposal_iou,
)


# --------------------------------------------------------------------------------------------- boxes
def test_boxes_from_label_are_connected_components_of_the_hard_classes():
    label = np.zeros((8, 10), np.uint8)  # road everywhere
    label[1:3, 1:4] = 5  # pole: a 2x3 block
    label[6, 8] = 5  # pole: one pixel, separate
    label[4:8, 0:2] = 7  # traffic sign
    label[5, 5] = 255  # ignore: never a box
    label[0, 9] = 6  # traffic light, not asked for
    label[3, 4] = 5  # touches the block diagonally -> same component (8-connectivity)
    boxes, ids = boxes_from_label(label, [5, 7])
    got = sorted(zip(ids.tolist(), [tuple(b) for b in boxes.tolist()]))
    assert got == [(5, (1.0, 1.0, 5.0, 4.0)), (5, (8.0, 6.0, 9.0, 7.0)), (7, (0.0, 4.0, 2.0, 8.0))]
    assert boxes.dtype == torch.float32 and ids.dtype == torch.int64
    boxes, ids = boxes_from_label(torch.from_numpy(label).long(), [5], min_area=2)  # drops the one-pixel pole
    assert boxes.tolist() == [[1.0, 1.0, 5.0, 4.0]] and ids.tolist() == [5]
    boxes, ids = boxes_from_label(label, [11])
    assert boxes.shape == (0, 4) and ids.shape == (0,)


def test_context_box_is_a_square_around_the_box_inside_the_image():
    assert context_box([10, 10, 14, 16], 2.0, 4, (64, 128)) == (6, 7, 18, 19)  # side 12 centred on (12, 13)
    assert context_box([0, 0, 2, 2], 2.0, 16, (64, 128)) == (0, 0, 16, 16)  # min side, shifted inside
    assert context_box([120, 60, 128, 64], 3.0, 8, (64, 128)) == (104, 40, 128, 64)  # shifted from the corner
    assert context_box([0, 0, 100, 10], 2.0, 8, (64, 128)) == (18, 0, 82, 64)  # at most the shorter side


# --------------------------------------------------------------------------------------------- HDM
def test_hdm_relabel_keeps_only_positives_where_the_region_model_wins():
    # ground truth 4x8: a pole (5) at columns 1-2 and a person (11) at columns 5-6 on road (0)
    target = torch.zeros(4, 8, dtype=torch.long)
    target[:, 1:3] = 5
    target[:, 5:7] = 11
    target[0, 7] = 255
    image_pred = torch.zeros(4, 8, dtype=torch.long)  # Phi_I misses the pole, finds the person
    image_pred[:, 5:7] = 11
    region_pred = target.clone()  # Phi_R gets the pole, but calls the person a rider
    region_pred[0, 7] = 0
    region_pred[:, 5:7] = 12
    anchors = [(0, 0, 4, 4), (4, 0, 8, 4), (0, 0, 8, 4), (1, 0, 3, 2), (6, 0, 8, 2)]
    labels = torch.tensor([1, 1, 1, 0, -1])  # the RPN matching: 3 positives, a negative, an ignored one
    region_iou = torch.tensor([proposal_iou(region_pred, target, a, 19) for a in anchors])
    image_iou = torch.tensor([proposal_iou(image_pred, target, a, 19) for a in anchors])
    # anchor 0 (pole area): Phi_R exact (1.0) vs Phi_I 1/2 road IoU, pole 0 -> mean over {road, pole} = 0.25
    assert region_iou[0] == 1.0 and image_iou[0] == pytest.approx(0.25)
    # anchor 1 (person area, (7,0) ignored): Phi_I exact, Phi_R 0 for person and rider -> (1 + 0 + 0) / 3
    assert image_iou[1] == 1.0 and region_iou[1] == pytest.approx(1 / 3)
    # anchor 2 (everything): region {road 1, pole 1, person 0, rider 0} = 0.5; image {road 15/23, pole 0, person 1}
    assert region_iou[2] == pytest.approx(0.5) and image_iou[2] == pytest.approx((15 / 23 + 0 + 1) / 3)
    new = hdm_relabel(labels, region_iou, image_iou)
    assert new.tolist() == [1, 0, 0, 0, -1]  # only anchor 0 stays positive (Eq. 1: strictly better)
    assert labels.tolist() == [1, 1, 1, 0, -1]  # input untouched
    # ties and NaN (no labelled pixel) are not better
    tie = hdm_relabel(torch.tensor([1, 1]), torch.tensor([0.5, float("nan")]), torch.tensor([0.5, 0.1]))
    assert tie.tolist() == [0, 0]
    assert math.isnan(proposal_iou(region_pred, torch.full((4, 8), 255), (0, 0, 8, 4), 19))


def test_rdn_loss_uses_the_hdm_labels_as_targets():
    torch.manual_seed(0)
    rdn = RDN(stages=1, anchor_sizes=(8, 16), aspect_ratios=(1.0,), batch_per_image=64)
    x = torch.rand(2, 3, 32, 64)
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.zeros(0, 4)]
    matched = rdn.losses(x, boxes)
    assert matched["box"] > 0 and torch.isfinite(matched["objectness"])
    anchors = rdn.anchors(x)
    labels, _ = rdn.match(anchors, boxes)
    assert int((labels[0] == 1).sum()) >= 1 and int((labels[1] == 1).sum()) == 0
    # HDM turned every positive into background: no positive anchor, so no box-regression loss
    relabelled = [hdm_relabel(lab, torch.zeros(len(lab)), torch.ones(len(lab))) for lab in labels]
    hdm = rdn.losses(x, boxes, relabelled)
    assert hdm["box"].item() == 0.0 and hdm["objectness"].item() > 0
    rdn.eval()
    (b0, s0), _ = rdn.propose(x)
    assert b0.shape[1] == 4 and len(b0) == len(s0) > 0 and bool((s0[:-1] >= s0[1:]).all())
    assert float(b0[:, 2].max()) <= 64 and float(b0[:, 3].max()) <= 32


@pytest.mark.slow
def test_train_rdn_resumes_from_its_state_exactly(tmp_path, monkeypatch):
    """A killed `train_rdn` continued from its ``state_dir`` ends with the weights and losses of an
    uninterrupted run (same batches, flips, RPN anchor samples, SGD momentum and poly schedule)."""
    from nightseg.core.errors import UserError
    from nightseg.core.loop_state import state_step
    from nightseg.methods.nightlab import train_rdn

    g = torch.Generator().manual_seed(0)
    samples = [(torch.rand(3, 32, 64, generator=g), torch.zeros(32, 64, dtype=torch.long),
                torch.tensor([[8.0 + 4 * i, 8.0, 24.0 + 4 * i, 24.0]])) for i in range(3)]

    def fresh() -> RDN:
        torch.manual_seed(0)
        return RDN(stages=1, anchor_sizes=(8, 16), aspect_ratios=(1.0,), batch_per_image=64)

    kw = {"steps": 5, "batch_size": 2, "lr": 0.01, "seed": 3, "flip": True}
    plain = fresh()
    plain_losses = train_rdn(plain, samples, **kw)
    saved = fresh()
    assert train_rdn(saved, samples, **kw, state_dir=tmp_path / "full", save_every=2) == plain_losses
    assert state_step(tmp_path / "full") == 5  # saved at steps 2, 4 and at the end

    real, calls = RDN.losses, []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # killed in step 4: the last state is the one after step 2
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RDN, "losses", dying)
    with pytest.raises(KeyboardInterrupt):
        train_rdn(fresh(), samples, **kw, state_dir=tmp_path / "cut", save_every=2)
    monkeypatch.setattr(RDN, "losses", real)
    assert state_step(tmp_path / "cut") == 2
    resumed = fresh()
    torch.manual_seed(1234)  # as in a new process: the global generator state must not matter
    assert train_rdn(resumed, samples, **kw, state_dir=tmp_path / "cut", save_every=2) == plain_losses
    for net in (saved, resumed):
        assert net.state_dict().keys() == plain.state_dict().keys()
        assert all(torch.equal(v, plain.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(UserError, match=r"cut.state\.json: was trained with other settings \(seed=3"):
        train_rdn(fresh(), samples, **{**kw, "seed": 4}, state_dir=tmp_path / "cut")


# --------------------------------------------------------------------------------------------- merge
def test_merge_replaces_only_hard_class_pixels_inside_proposals():
    image = torch.zeros(3, 2, 3)
    image[0] = 1.0  # Phi_I: class 0 everywhere
    region = torch.zeros(3, 2, 3)
    region[1] = 2.0  # Phi_R: class 1 ...
    region[2, :, 0] = 5.0  # ... except class 2 in column 0
    region[2, 1, 2] = 5.0  # and at (1, 2)
    covered = torch.tensor([[True, True, False], [True, True, True]])
    merged = merge_logits(image, region, covered, hard_classes=[2])
    assert merged.argmax(0).tolist() == [[2, 0, 0], [2, 0, 2]]
    assert torch.equal(merged[:, 0, 0], region[:, 0, 0]) and torch.equal(merged[:, 0, 1], image[:, 0, 1])
    assert merge_logits(image, region, covered, hard_classes=[1, 2]).argmax(0).tolist() == [[2, 1, 0], [2, 1, 2]]
    assert torch.equal(merge_logits(image, region, torch.zeros(2, 3, dtype=torch.bool), [2]), image)
    batched = merge_logits(image[None], region[None], covered[None], [2])  # [B,C,H,W]
    assert torch.equal(batched[0], merged)


def test_paste_regions_puts_logits_back_inside_the_proposal_and_averages_overlaps():
    a = torch.zeros(2, 2, 2)
    a[1] = 1.0  # class 1 with logit 1
    b = torch.zeros(2, 4, 4)
    b[1] = 3.0
    crops = [(1, 0, 3, 2), (0, 0, 4, 4)]  # crop a is 2x2 at x 1-2, crop b the whole 4x4 image
    proposals = [(2.0, 0.0, 3.0, 1.0), (1.5, 0.0, 4.0, 2.0)]  # pixel (2,0) | pixels x 1-3, y 0-1
    logits, covered = paste_regions([a, b], crops, proposals, (4, 4))
    assert covered.tolist() == [[False, True, True, True], [False, True, True, True], [False] * 4, [False] * 4]
    assert float(logits[1, 0, 2]) == pytest.approx(2.0)  # (1 + 3) / 2 where both proposals cover
    assert float(logits[1, 1, 1]) == pytest.approx(3.0) and float(logits[1, 3, 3]) == 0.0


def test_select_hard_classes_uses_the_threshold_on_classes_with_ground_truth():
    from nightseg.core.classes import CLASS_NAMES
    from nightseg.methods.nightlab import select_hard_classes

    per_class = {name: {"iou": 0.9, "gt_pixels": 10} for name in CLASS_NAMES}
    per_class["pole"] = {"iou": 0.45, "gt_pixels": 10}
    per_class["terrain"] = {"iou": 0.29, "gt_pixels": 10}
    per_class["train"] = {"iou": 0.0, "gt_pixels": 0}  # predicted, never in the ground truth: not hard
    per_class["bus"] = {"iou": float("nan"), "gt_pixels": 0}
    assert select_hard_classes(per_class, 0.5) == [5, 9]
    assert select_hard_classes(per_class, 0.3) == [9]
    assert select_hard_classes(per_class, 0.95) == [i for i in range(19) if i not in (15, 16)]


# --------------------------------------------------------------------------------------------- end to end
def _overrides(root: Path) -> list[str]:
    return [f"data.root={root / 'data'}", "method.image_steps=2", "train.max_steps=2", "method.rdn.steps=2",
            "method.hdm.steps=2", "train.progress=false", "data.batch_size=2", "method.merge.score_thresh=0.0",
            "method.hard_classes=[5,6,7,11,12,18]"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from nightseg.pipelines.nightlab import run_nightlab
    from nightseg.synthetic import generator as synthetic

    root = tmp_path_factory.mktemp("nightlab")
    counts = {"train": 0, "val": 0, "pairs": 0, "night_val": 2, "night_train": 4, "nightcity_val": 2}
    synthetic.generate(root / "data", preset="tiny", counts=counts, progress=False)
    summary = run_nightlab("configs/cpu/nightlab_mini.yaml", _overrides(root), root / "run")
    return root, summary


def test_tiny_pipeline_writes_every_stage_and_resumes(pipeline, caplog):
    from nightseg.pipelines.nightlab import run_nightlab

    root, summary = pipeline
    run = root / "run"
    for name in ("hard.json", "rdn.safetensors", "hdm_labels.safetensors", "hdm.safetensors", "nightlab.safetensors",
                 "nightlab_rdn.safetensors", "region/checkpoints/last.safetensors", "image/checkpoints/last.safetensors"):
        assert (run / name).is_file(), name
    assert json.loads((run / "hard.json").read_text())["hard_classes"] == [5, 6, 7, 11, 12, 18]
    assert summary["hard_classes"] == [5, 6, 7, 11, 12, 18]
    assert 0 <= summary["hdm"]["kept"] <= summary["hdm"]["positive"] and summary["hdm"]["positive"] > 0
    # HDM on the default split: 20 % of the 4 night train images (1), held out of Phi_I's training too
    assert summary["hdm"]["hdm_split"] == "nightcity NightCity train holdout 0.2 seed 0"
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.core.config import load_config

    assert load_checkpoint(run / "hdm_labels.safetensors")[0]["labels"].shape[0] == 1
    image_source = load_config(run / "image" / "config.yaml").data.source
    assert image_source.dataset == "nightseg.methods.nightlab:without_holdout"
    assert (image_source.options["holdout"], image_source.options["holdout_seed"]) == (0.2, 0)
    assert load_config(run / "region" / "config.yaml").data.source.options["holdout"] == 0.2
    stamp = (run / "rdn.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="nightseg.nightlab"):
        again = run_nightlab("configs/cpu/nightlab_mini.yaml", _overrides(root), run)  # every stage done: skipped
    assert again["hdm"] == summary["hdm"] and (run / "rdn.safetensors").stat().st_mtime_ns == stamp
    assert not [r for r in caplog.records if "HDM labels and fine-tuning" in r.getMessage()]  # held out: no warning


def test_hdm_split_option_moves_the_hdm_labels_and_refuses_stale_outputs(pipeline, tmp_path, caplog):
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.core.errors import UserError
    from nightseg.pipelines.nightlab import run_nightlab

    root, _ = pipeline
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    overrides = [*_overrides(root), "method.hdm.split=val"]  # the scored split: only when asked, with a warning
    with pytest.raises(UserError, match=r"hdm_labels\.safetensors: made on the HDM split 'nightcity NightCity train "
                                        r"holdout 0.2 seed 0'"):
        run_nightlab("configs/cpu/nightlab_mini.yaml", overrides, run)  # outputs of the held-out split: refused
    for name in ("hdm_labels", "hdm", "nightlab"):
        for suffix in (".safetensors", ".json"):
            (run / f"{name}{suffix}").unlink()
    stamp = (run / "rdn.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="nightseg.nightlab"):
        moved = run_nightlab("configs/cpu/nightlab_mini.yaml", overrides, run)
    warned = [r.getMessage() for r in caplog.records if "HDM labels and fine-tuning" in r.getMessage()]
    assert len(warned) == 1 and "nightcity val" in warned[0] and "method.hdm.split" in warned[0]
    assert moved["hdm"]["hdm_split"] == "nightcity NightCity val"
    labels = load_checkpoint(run / "hdm_labels.safetensors")[0]["labels"]
    assert labels.shape[0] == 2  # the 2 val images, not the held-out train image
    held_labels = load_checkpoint(root / "run" / "hdm_labels.safetensors")[0]["labels"]
    assert labels.shape[1] == held_labels.shape[1]  # same anchors per image (same frame size)
    assert (run / "rdn.safetensors").stat().st_mtime_ns == stamp  # stages 1-4 reused


def test_nightlab_checkpoint_loads_in_segmenter_and_merges(pipeline, run_cli, tmp_path):
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.core.io import list_images, read_image, read_label
    from nightseg.inference import Predictor, load_inference_net

    root, summary = pipeline
    ckpt = Path(summary["nightlab"])
    _, meta = load_checkpoint(ckpt)
    assert meta["model"]["name"] == "nightseg.models.nightlab:build_nightlab" and meta["method"] == "nightlab"
    net, _ = load_inference_net(ckpt)
    nightlab = net.segmenter
    image_path = list_images(root / "data" / "dark_zurich" / "rgb_anon" / "val")[0]
    x = torch.from_numpy(read_image(image_path)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        details = nightlab.forward_details(x)
    logits = details["logits"]
    assert logits.shape == (1, 19, *x.shape[-2:])
    assert len(details["proposals"][0][0]) > 0 and bool(details["covered"].any())  # score_thresh 0: proposals
    # outside the proposals (or where Phi_R's class is not hard) the image-level logits are kept unchanged
    same = (logits == details["image_logits"]).all(1)
    assert bool(same[~details["covered"]].all())
    replaced = details["covered"] & torch.isin(logits.argmax(1), torch.tensor(nightlab.hard_classes)) & ~same
    assert bool((same | replaced).all())
    segmenter = Predictor.from_checkpoint(ckpt)
    pred = segmenter.predict(image_path)
    assert pred.labels.shape == x.shape[-2:] and pred.labels.max() < 19
    expected = logits.argmax(1)[0].numpy()  # BatchNorm folding changes logits only by rounding
    assert (pred.labels == expected).mean() > 0.98
    # `nightseg predict` (the CLI) writes the same label maps as Predictor.predict
    images = list_images(root / "data" / "dark_zurich" / "rgb_anon" / "val")
    out = tmp_path / "pred"
    res = run_cli("predict", ckpt, root / "data" / "dark_zurich" / "rgb_anon" / "val", "--out", out,
                  "--device", "cpu", "--outputs", "labels")
    assert res.code == 0, res.err
    written = sorted(out.rglob("*_labelTrainIds.png"))
    assert len(written) == len(images) == 2
    for image in images:
        stem = Path(image).name.rsplit(".", 1)[0]
        labels = read_label(next(p for p in written if p.name == f"{stem}_labelTrainIds.png"))
        np.testing.assert_array_equal(labels, segmenter.predict(image).labels)


def test_nightlab_onnx_export_and_backend_are_refused_in_one_line(pipeline, run_cli, tmp_path):
    root, summary = pipeline
    ckpt = Path(summary["nightlab"])
    out = tmp_path / "nightlab.onnx"
    res = run_cli("export", ckpt, "--format", "onnx", "--out", out)
    assert res.code == 2 and not out.exists()
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ckpt}: NightLab models cannot be exported to ONNX")
    assert "--backend onnx" in lines[0] and "Traceback" not in res.err
    images = root / "data" / "dark_zurich" / "rgb_anon" / "val"
    res = run_cli("predict", ckpt, images, "--out", tmp_path / "pred", "--backend", "onnx", "--device", "cpu")
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {ckpt}: NightLab models cannot")
    assert not any((tmp_path / "pred").rglob("*.png"))  # refused before any image was segmented


def test_cli_refuses_a_recipe_that_is_not_nightlab_and_a_missing_phi_i(run_cli, tmp_path):
    res = run_cli("nightlab", "--config", "configs/cpu/supervised_nightcity.yaml", "--out", tmp_path / "a")
    assert res.code == 2 and "configs/cpu/supervised_nightcity.yaml" in res.err and "NightLab recipe" in res.err
    missing = tmp_path / "phi_i.safetensors"
    res = run_cli("nightlab", "--config", "configs/cpu/nightlab_mini.yaml", "--out", tmp_path / "b",
                  f"data.root={tmp_path}", f"method.image_checkpoint={missing}")
    assert res.code == 2 and str(missing) in res.err and "not found" in res.err


def test_holdout_is_seeded_deterministic_and_disjoint_from_every_training_set(pipeline):
    from nightseg.core.errors import UserError
    from nightseg.data import build_dataset
    from nightseg.methods.nightlab import (
        HardRegionCrops,
        holdout_indices,
        training_indices,
        without_holdout,
    )

    held = holdout_indices(100, 0.2, 0)
    assert len(held) == 20 and held == sorted(held) and held == holdout_indices(100, 0.2, 0)
    assert held != holdout_indices(100, 0.2, 1)  # the seed picks the images
    assert sorted(held + training_indices(100, 0.2, 0)) == list(range(100))
    assert holdout_indices(4, 0.2, 0) == [holdout_indices(4, 0.2, 0)[0]] and holdout_indices(10, 0.0) == []
    with pytest.raises(UserError, match="method.hdm.holdout"):
        holdout_indices(10, 1.0)
    root, _ = pipeline
    night = root / "data" / "NightCity"
    full = build_dataset("nightcity", night, "train")
    (out,) = holdout_indices(len(full), 0.2, 0)
    kept = without_holdout(night, "train", base="nightcity", holdout=0.2, holdout_seed=0)
    names = {full.load(i)["name"] for i in range(len(full))}
    kept_names = {kept[i]["name"] for i in range(len(kept))}
    assert len(kept) == len(full) - 1 and names - kept_names == {full.load(out)["name"]}  # Phi_I's stream
    crops = HardRegionCrops(night, "train", hard_classes=[5, 6, 7, 11, 12, 18, 13], min_area=1, holdout=0.2)
    assert crops.entries and out not in {index for index, _ in crops.entries}  # Phi_R's stream


def test_holdout_refuses_a_phi_i_recipe_on_other_images(pipeline, tmp_path):
    from nightseg.core.errors import UserError
    from nightseg.pipelines.nightlab import run_nightlab

    root, _ = pipeline
    overrides = [*_overrides(root), "method.image_config=cpu/supervised_cityscapes.yaml"]
    with pytest.raises(UserError, match="Phi_I trains on cityscapes cityscapes train, not on nightcity NightCity train"):
        run_nightlab("configs/cpu/nightlab_mini.yaml", overrides, tmp_path / "run")
    assert not (tmp_path / "run" / "image").exists()  # refused before any training

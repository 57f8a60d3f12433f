"""See Clearer at Night day<->night CycleGAN: losses, image pool, train/resume/apply, translated datasets, predict --night2day."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nightseg.core.checkpoint import load_checkpoint, save_checkpoint
from nightseg.core.io import read_image, read_label
from nightseg.models.translator import ImagePool, PatchDiscriminator, ResnetGenerator, load_translator
from nightseg.pipelines.translation import (
    TranslatorSettings,
    cycle_loss,
    discriminator_loss,
    identity_loss,
    lsgan_loss,
    random_crop,
    train_translator,
    translate_array,
)

SIZE = (32, 64)
TINY = ["--size", "32x64", "--channels", "8", "--blocks", "1", "--disc-channels", "8", "--threads", "1"]


# --------------------------------------------------------------------------------------------- losses
def test_lsgan_loss_matches_hand_computed_values():
    pred = torch.tensor([0.2, 0.9])
    assert lsgan_loss(pred, True).item() == pytest.approx((0.8**2 + 0.1**2) / 2)  # 0.325
    assert lsgan_loss(pred, False).item() == pytest.approx((0.2**2 + 0.9**2) / 2)  # 0.425
    d = discriminator_loss(torch.tensor([0.9, 0.7]), torch.tensor([0.2, 0.4]))
    assert d.item() == pytest.approx(0.5 * ((0.01 + 0.09) / 2 + (0.04 + 0.16) / 2))  # 0.075


def test_cycle_and_identity_losses_match_hand_computed_values():
    real = torch.tensor([0.0, 1.0, 0.5, -1.0])
    other = torch.tensor([0.1, 0.5, 0.5, -0.6])  # |diff| = 0.1, 0.5, 0, 0.4 -> mean 0.25
    assert cycle_loss(real, other).item() == pytest.approx(2.5)  # lambda 10
    assert cycle_loss(real, other, weight=4.0).item() == pytest.approx(1.0)
    assert identity_loss(real, other).item() == pytest.approx(1.25)  # 0.5 * lambda
    assert cycle_loss(real, real).item() == 0.0


def test_linear_lr_decay():
    s = TranslatorSettings(steps=10, lr=1.0, decay_start=0.5)
    assert [s.lr_at(t) for t in range(5)] == [1.0] * 5
    assert s.lr_at(5) == pytest.approx(1.0)
    assert s.lr_at(9) == pytest.approx(0.2)
    assert s.lr_at(10) == pytest.approx(0.0)


def test_networks_shapes():
    g = ResnetGenerator(channels=8, blocks=2)
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    d = PatchDiscriminator(channels=8, layers=3)
    assert d(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # 70x70 PatchGAN on 256x256: 30x30 patches


# --------------------------------------------------------------------------------------------- image pool
def _images(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone()


def test_image_pool_fills_then_swaps_half_the_time():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(ImagePool(0).query(_images(3), g), _images(3))  # size 0: off
    pool = ImagePool(4)
    first = pool.query(_images(4), g)
    assert torch.equal(first, _images(4)) and len(pool.images) == 4  # filling: returned as given
    swaps = 0
    for k in range(4, 404):
        before = sorted(float(im[0, 0, 0, 0]) for im in pool.images)
        out = float(pool.query(_images(k + 1)[k:], g)[0, 0, 0, 0])
        after = sorted(float(im[0, 0, 0, 0]) for im in pool.images)
        if out == k:  # the new image itself; pool unchanged
            assert after == before
        else:  # a stored image came out and the new one took its place
            swaps += 1
            assert out in before and k in after and out not in after and len(after) == 4
    assert 160 < swaps < 240  # probability 1/2


def test_image_pool_is_deterministic_and_restorable():
    def run(pool: ImagePool, seed: int) -> list[float]:
        g = torch.Generator().manual_seed(seed)
        return [float(pool.query(_images(k + 1)[k:], g)[0, 0, 0, 0]) for k in range(20)]

    a, b = ImagePool(5), ImagePool(5)
    assert run(a, 3) == run(b, 3)
    c = ImagePool(5)
    c.load(a.state())
    assert torch.equal(c.state(), a.state()) and run(c, 9) == run(a, 9)


# --------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nightseg.synthetic import generator as synthetic

    root = tmp_path_factory.mktemp("synth")
    synthetic.generate(root, preset="tiny", size=SIZE, seed=0, progress=False)
    return root


def _day_night(data: Path) -> tuple[list[Path], list[Path]]:
    from nightseg.core.io import list_images

    return (list_images(data / "cityscapes" / "leftImg8bit" / "train"),
            list_images(data / "dark_zurich" / "rgb_anon" / "train" / "night"))


def test_resumed_training_equals_uninterrupted(data, tmp_path, monkeypatch):
    import nightseg.pipelines.translation as tr

    torch.set_num_threads(1)
    day, night = _day_night(data)
    s = TranslatorSettings(steps=4, size=SIZE, channels=8, blocks=1, disc_channels=8, pool_size=2, seed=1)
    train_translator(day, night, tmp_path / "full", s, save_every=2, sample_every=0, progress=False)
    real_step, calls = tr.training_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tr, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_translator(day, night, tmp_path / "cut", s, save_every=2, sample_every=0, progress=False)
    monkeypatch.setattr(tr, "training_step", real_step)
    assert load_checkpoint(tmp_path / "cut" / "translator.safetensors")[1]["training"]["steps_done"] == 2
    result = train_translator(day, night, tmp_path / "cut", s, save_every=2, sample_every=0, progress=False)
    assert result["history"][-1]["step"] == 4
    full, _ = load_checkpoint(tmp_path / "full" / "translator.safetensors")
    cut, _ = load_checkpoint(tmp_path / "cut" / "translator.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    with pytest.raises(Exception, match="other settings"):
        train_translator(day, night, tmp_path / "cut", TranslatorSettings(steps=5, size=SIZE, channels=8, blocks=1),
                         progress=False)


def test_random_crop_takes_the_drawn_window_of_each_image():
    """CycleGAN's resize_and_crop: each image's window starts at the offsets drawn (tops, then lefts) from the
    generator, checked against the same draws made by hand; a crop larger than the image is refused."""
    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    crops = random_crop(images, (4, 5), torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    tops, lefts = torch.randint(0, 3, (2,), generator=g).tolist(), torch.randint(0, 4, (2,), generator=g).tolist()
    assert crops.shape == (2, 3, 4, 5)
    for i in range(2):
        assert torch.equal(crops[i], images[i, :, tops[i]:tops[i] + 4, lefts[i]:lefts[i] + 5])
    with pytest.raises(Exception, match="larger than the training size"):
        random_crop(images, (7, 5), torch.Generator())


def test_training_on_crops_saves_the_crop_and_refuses_another_on_resume(data, tmp_path, run_cli):
    """--crop trains on patches (the sample grids stay whole frames); the crop is a saved setting, and states
    without it (saved before the option existed) keep their settings unchanged."""
    day, night = "cityscapes/leftImg8bit/train", "dark_zurich/rgb_anon/train/night"
    args = ["translate", "train", "--day", data / day, "--night", data / night, "--out", tmp_path, "--steps", "2",
            "--sample-every", "2", *TINY]
    assert run_cli(*args, "--crop", "24x48").code == 0
    assert json.loads((tmp_path / "state" / "state.json").read_text())["state"]["settings"]["crop"] == [24, 48]
    assert read_image(tmp_path / "samples" / "step_000002.png").shape == (6 * (SIZE[0] + 4), 3 * SIZE[1] + 4, 3)
    other = run_cli(*args, "--crop", "24x24", "--resume")
    assert other.code == 2 and "other settings" in other.err
    too_big = run_cli(*args[:-len(TINY)], *TINY, "--out", tmp_path / "big", "--crop", "64x64")
    assert too_big.code == 2 and "crop 64x64" in too_big.err


@pytest.fixture(scope="module")
def translator(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nightseg.cli import main

    run = tmp_path_factory.mktemp("translator")
    code = main(["translate", "train", "--day", str(data / "cityscapes" / "leftImg8bit" / "train"),
                 "--night", str(data / "dark_zurich" / "rgb_anon" / "train" / "night"), "--out", str(run),
                 "--steps", "3", "--sample-every", "3", *TINY])
    assert code == 0
    return run / "translator.safetensors"


def test_train_cli_writes_generators_state_and_samples(translator, data, run_cli):
    run = translator.parent
    tensors, meta = load_checkpoint(translator)
    assert meta["model"]["generator"] == {"channels": 8, "blocks": 1} and meta["training"]["steps_done"] == 3
    assert any(k.startswith("G_day2night.") for k in tensors) and any(k.startswith("G_night2day.") for k in tensors)
    assert "crop" not in json.loads((run / "state" / "state.json").read_text())["state"]["settings"]  # resumable as before
    grid = read_image(run / "samples" / "step_000003.png")
    assert grid.shape == (6 * (SIZE[0] + 4), 3 * SIZE[1] + 4, 3)  # 3 day + 3 night rows, 3 columns
    again = run_cli("translate", "train", "--day", data / "cityscapes" / "leftImg8bit" / "train",
                    "--night", data / "dark_zurich" / "rgb_anon" / "train" / "night", "--out", run, "--steps", "3", *TINY)
    assert again.code == 2 and "--resume" in again.err and str(run / "state") in again.err


def test_apply_round_trip(translator, data, tmp_path, run_cli):
    night_dir = data / "dark_zurich" / "rgb_anon" / "val" / "night"
    res = run_cli("translate", "apply", "--checkpoint", translator, "--direction", "night2day", night_dir,
                  "--out", tmp_path / "out")
    assert res.code == 0, res.err
    sources = sorted(night_dir.rglob("*.png"))
    outputs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(outputs) == len(sources) == 3
    net = load_translator(translator, "night2day")
    for src, out in zip(sources, outputs):
        assert out.relative_to(tmp_path / "out") == src.relative_to(night_dir)
        image, got = read_image(src), read_image(out)
        assert got.shape == image.shape
        assert np.array_equal(got, translate_array(net, image))
        assert not np.array_equal(got, image)
    again = run_cli("translate", "apply", "--checkpoint", translator, "--direction", "night2day", night_dir,
                    "--out", tmp_path / "out")
    assert again.code == 0 and "3 already done" in again.out
    bad = tmp_path / "seg.safetensors"
    save_checkpoint(bad, {"w": torch.zeros(1)}, {"model": {"name": "pspnet_tiny", "num_classes": 19}})
    wrong = run_cli("translate", "apply", "--checkpoint", bad, "--direction", "night2day", night_dir, "--out", tmp_path)
    assert wrong.code == 2 and str(bad) in wrong.err


def test_dataset_command_layout_ratio_and_resume(translator, data, tmp_path, run_cli):
    from nightseg.data import build_dataset

    src, out = data / "cityscapes", tmp_path / "mix" / "cityscapes"
    res = run_cli("translate", "dataset", "--checkpoint", translator, "--src", src, "--out", out, "--ratio", "0.5")
    assert res.code == 0, res.err
    images = sorted((src / "leftImg8bit" / "train").rglob("*.png"))
    changed = [p for p in images
               if not np.array_equal(read_image(p), read_image(out / p.relative_to(src)))]
    assert len(images) == 6 and len(changed) == 3  # round(0.5 * 6) translated, same names
    for label in (src / "gtFine" / "train").rglob("*.png"):
        assert np.array_equal(read_label(label), read_label(out / label.relative_to(src)))
    dataset = build_dataset("cityscapes", out, "train")
    assert len(dataset) == 6 and dataset[0]["label"].dtype == torch.int64
    before = _snapshot(out)
    again = run_cli("translate", "dataset", "--checkpoint", translator, "--src", src, "--out", out, "--ratio", "0.5")
    assert again.code == 0 and "nothing missing, nothing written" in again.out
    assert _snapshot(out) == before  # a complete copy: nothing rewritten, not even the manifest
    # outputs deleted after a finished run (a translated image, a copied one, a label) are repaired, the rest kept
    victims = [out / changed[0].relative_to(src), out / next(p for p in images if p not in changed).relative_to(src),
               next((out / "gtFine" / "train").rglob("*.png"))]
    expected = {v: v.read_bytes() for v in victims}
    for v in victims:
        v.unlink()
    repaired = run_cli("translate", "dataset", "--checkpoint", translator, "--src", src, "--out", out, "--ratio", "0.5")
    assert repaired.code == 0 and "3 file(s) written this run" in repaired.out
    assert all(v.read_bytes() == expected[v] for v in victims)  # the same bytes as the first run's
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k not in victims and k.name != "translation_manifest.json"} == \
        {k: v for k, v in before.items() if k not in victims and k.name != "translation_manifest.json"}
    other = run_cli("translate", "dataset", "--checkpoint", translator, "--src", src, "--out", out, "--ratio", "1")
    assert other.code == 2 and "translation_manifest.json" in other.err
    full = run_cli("translate", "dataset", "--checkpoint", translator, "--src", src, "--out", tmp_path / "all",
                   "--ratio", "1")
    assert full.code == 0 and "6 of 6" in full.out


def _snapshot(root: Path) -> dict[Path, tuple[int, int, bytes]]:
    """Return {file: (inode, mtime_ns, bytes)} under `root`: a rewritten file (atomic replace) changes inode."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_interrupted_run_resumes_and_writes_only_what_is_missing(translator, data, tmp_path, monkeypatch,
                                                                         run_cli):
    import json

    import nightseg.pipelines.translation as tr

    src, out = data / "cityscapes", tmp_path / "mix"
    real_translate, calls = tr.translate_array, []

    def dying_translate(net, image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while translating the third image
        return real_translate(net, image)

    monkeypatch.setattr(tr, "translate_array", dying_translate)
    with pytest.raises(KeyboardInterrupt):
        tr.translate_dataset(translator, src, out, 1.0, progress=False)
    manifest = json.loads((out / "translation_manifest.json").read_text())
    assert "complete" not in manifest and len(manifest["translated"]) == 6
    done = _snapshot(out / "leftImg8bit")
    assert len(done) == 2 and not list(out.rglob(".*.tmp*"))  # two finished images, no half-written file
    labels = _snapshot(out / "gtFine")
    assert len(labels) == len([p for p in (src / "gtFine" / "train").rglob("*") if p.is_file()])

    calls.clear()
    monkeypatch.setattr(tr, "translate_array", lambda net, image: (calls.append(1), real_translate(net, image))[1])
    res = run_cli("translate", "dataset", "--checkpoint", translator, "--src", src, "--out", out, "--ratio", "1")
    assert res.code == 0, res.err
    assert len(calls) == 4 and "4 file(s) written this run" in res.out  # only the 4 missing images
    after = _snapshot(out / "leftImg8bit")
    assert {k: after[k] for k in done} == done and _snapshot(out / "gtFine") == labels  # finished files untouched
    assert json.loads((out / "translation_manifest.json").read_text())["complete"] is True
    net = load_translator(translator, "day2night")
    for image in sorted((src / "leftImg8bit" / "train").rglob("*.png")):
        assert np.array_equal(read_image(out / image.relative_to(src)), real_translate(net, read_image(image)))


def test_dataset_dark_zurich_layout_night2day(translator, data, tmp_path, run_cli):
    from nightseg.data import build_dataset

    src, out = data / "dark_zurich", tmp_path / "day" / "dark_zurich"
    res = run_cli("translate", "dataset", "--layout", "dark_zurich", "--checkpoint", translator, "--src", src,
                  "--out", out, "--ratio", "1")
    assert res.code == 0, res.err
    assert "3 of 3 val images translated night2day" in res.out
    images = sorted((src / "rgb_anon" / "val" / "night").rglob("*_rgb_anon.png"))
    net = load_translator(translator, "night2day")
    for image in images:  # same names, each the night->day generator's output
        got = read_image(out / image.relative_to(src))
        assert np.array_equal(got, translate_array(net, read_image(image))) and not np.array_equal(got, read_image(image))
    gt = sorted(p for p in (src / "gt" / "val" / "night").rglob("*") if p.is_file())
    assert len(gt) == 9 and all((out / p.relative_to(src)).read_bytes() == p.read_bytes() for p in gt)
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == \
        sorted(p.relative_to(src) for p in [*images, *gt])  # nothing else (train, test) copied
    translated, original = build_dataset("dark_zurich", out, "val"), build_dataset("dark_zurich", src, "val")
    assert len(translated) == len(original) == 3
    for i in range(3):  # the loader reads the copy: same labels and invalid masks (indexing wraps: no iteration)
        a, b = translated[i], original[i]
        assert a["name"] == b["name"] and torch.equal(a["label"], b["label"]) and torch.equal(a["invalid"], b["invalid"])
    # the unlabelled train night frames work too (no gt/ needed there); a missing condition folder is one error
    train = run_cli("translate", "dataset", "--layout", "dark_zurich", "--checkpoint", translator, "--src", src,
                    "--out", tmp_path / "train_day", "--ratio", "0.5", "--split", "train")
    assert train.code == 0 and "3 of 6 train images translated night2day" in train.out
    assert len(build_dataset("dark_zurich", tmp_path / "train_day", "train")) == 6
    bad = run_cli("translate", "dataset", "--layout", "dark_zurich", "--checkpoint", translator, "--src", src,
                  "--out", tmp_path / "tw", "--ratio", "1", "--condition", "twilight")
    assert bad.code == 2 and str(src / "rgb_anon" / "val" / "twilight") in bad.err
    flipped = run_cli("translate", "dataset", "--layout", "dark_zurich", "--checkpoint", translator, "--src", src,
                      "--out", out, "--ratio", "1", "--direction", "day2night")
    assert flipped.code == 2 and "other settings" in flipped.err


def test_predict_night2day_translates_before_segmenting(translator, data, tmp_path, run_cli):
    from nightseg.inference import Predictor
    from nightseg.models import build_segmenter

    torch.manual_seed(0)
    model = build_segmenter("pspnet_tiny").eval()
    ckpt = tmp_path / "seg.safetensors"
    save_checkpoint(ckpt, model.state_dict(), {"model": model.config})
    src = sorted((data / "dark_zurich" / "rgb_anon" / "val" / "night").rglob("*.png"))[0]
    res = run_cli("predict", ckpt, src, "--out", tmp_path / "pred", "--night2day", translator, "--outputs", "labels")
    assert res.code == 0, res.err
    got = read_label(tmp_path / "pred" / f"{src.stem}_labelTrainIds.png")
    image = read_image(src)
    day = translate_array(load_translator(translator, "night2day"), image)
    seg = Predictor.from_checkpoint(ckpt, night2day=translator)
    assert np.abs(seg.relit(image).astype(int) - day.astype(int)).max() <= 1  # the generator runs first
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        expected = model(load_translator(translator, "night2day")(x)).argmax(1)[0].numpy()
    assert (got == expected).mean() > 0.99
    missing = run_cli("predict", ckpt, src, "--out", tmp_path / "p2", "--night2day", tmp_path / "nope.safetensors")
    assert missing.code == 2 and "nope.safetensors" in missing.err

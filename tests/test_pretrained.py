"""Importing published checkpoints: Hugging Face SegFormer and smp hub folders equal their own libraries'
logits (1e-4) on random weights saved in the original format; `hf:` references (download mocked), the
`import` command, the preprocessing carried in metadata, class order, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nightseg.core.checkpoint import load_checkpoint, load_segmenter_weights
from nightseg.core.classes import CLASS_NAMES
from nightseg.inference import Predictor
from nightseg.models import build_segmenter
from nightseg.models.pretrained import import_checkpoint

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra (pip install -e '.[test]')")
transformers.utils.logging.disable_progress_bar()  # save_pretrained's bars would land in the captured stderr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
# Exactness is compared in float64 so that only a different function (not float32 rounding of logits in
# the tens) can exceed the bound; the bound is 1e-4, the models agree to ~1e-12.
TOL = 1e-4


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter and BatchNorm statistic random values, so that logits are far from zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var") or ("norm" in name and name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)
    return model.eval()


def hf_segformer(folder: Path, names: list[str] | None = None, seed: int = 0, bin_file: bool = False,
                 scale: float = 0.2) -> torch.nn.Module:
    """Save a random MiT-B0 SegformerForSemanticSegmentation into `folder` (as transformers does)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    names = list(CLASS_NAMES) if names is None else names
    config = SegformerConfig(num_labels=len(names), id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)})
    model = randomize(SegformerForSemanticSegmentation(config), seed, scale)
    model.save_pretrained(folder)
    if bin_file:  # the older pytorch_model.bin layout: same keys, pickled state dict
        from safetensors.torch import load_file

        torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    return model


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' own logits (float64) for RGB `x` in [0, 1], upsampled to the input size as NightSeg does."""
    with torch.no_grad():
        logits = model.double()(pixel_values=(x.double() - MEAN) / STD).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def nightseg_model(path: str | Path) -> torch.nn.Module:
    tensors, meta = load_checkpoint(path)
    config = dict(meta["model"])
    model = build_segmenter(config.pop("name"), **config).eval()
    model.load_state_dict(tensors)
    return model.double()


@pytest.fixture(scope="module")
def hf_b0(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf") / "segformer-b0-finetuned-cityscapes-1024-1024"
    return folder, hf_segformer(folder, scale=0.05)  # logits of a few units, as a trained model's


# --------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("bin_file", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_hf_segformer_logits_equal_transformers(tmp_path, run_cli, bin_file):
    folder = tmp_path / "hf"
    reference = hf_segformer(folder, seed=1, bin_file=bin_file)
    out = tmp_path / "b0.safetensors"
    result = run_cli("import", folder, "--out", out)
    assert result.code == 0, result.err
    assert "segformer_b0" in result.out and "Cityscapes trainId" in result.out
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    expected = hf_logits(reference, x)
    with torch.no_grad():
        ours = nightseg_model(out)(x.double())
    assert expected.abs().max() > 1.0  # random weights big enough that the comparison means something
    assert (ours - expected).abs().max() < TOL
    meta = load_checkpoint(out)[1]
    assert meta["pretrained"]["format"] == "hf" and meta["pretrained"]["classes"] == list(CLASS_NAMES)
    assert meta["pretrained"]["consumed"] == len(reference.state_dict())  # every source tensor used


def test_hf_class_order_is_rearranged_to_cityscapes_train_ids(tmp_path):
    names = list(CLASS_NAMES)[::-1]  # same classes, reversed order
    reference = hf_segformer(tmp_path / "rev", names=names, seed=2)
    converted = import_checkpoint(tmp_path / "rev")
    model = build_segmenter("segformer_b0", layer_norm_eps=1e-5, sdpa=True).eval()
    model.load_state_dict(converted.tensors)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = hf_logits(reference, x)
    with torch.no_grad():
        ours = model.double()(x.double())
    for train_id, name in enumerate(CLASS_NAMES):
        assert (ours[:, train_id] - expected[:, names.index(name)]).abs().max() < TOL, name


def test_smp_hub_folder_logits_equal_smp(tmp_path, run_cli):
    import segmentation_models_pytorch as smp

    reference = randomize(smp.Segformer("mit_b0", encoder_weights=None, classes=19), seed=3)
    reference.save_pretrained(tmp_path / "smp")
    out = tmp_path / "smp.safetensors"
    assert run_cli("import", tmp_path / "smp", "--out", out, "--format", "smp").code == 0
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.double()((x.double() - MEAN) / STD)
        ours = nightseg_model(out)(x.double())
    assert expected.abs().max() > 1.0
    assert (ours - expected).abs().max() < TOL
    assert load_checkpoint(out)[1]["pretrained"]["consumed"] == len(reference.state_dict())


# --------------------------------------------------------------------------------------------- interface
def fake_hub(monkeypatch, folder: Path) -> list:
    """Make huggingface_hub.snapshot_download return `folder` (no network in tests); return the calls."""
    import huggingface_hub

    calls = []

    def download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return calls


def night_image(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "in" / "night.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((64, 128, 3)) * 80).astype(np.uint8)).save(path)
    return path


def test_predict_accepts_hf_reference_and_applies_its_sliding_window(tmp_path, hf_b0, run_cli, monkeypatch):
    folder, reference = hf_b0
    calls = fake_hub(monkeypatch, folder)
    image = night_image(tmp_path)
    result = run_cli("predict", "hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024@main", image,
                     "--out", tmp_path / "pred", "--no-relight")
    assert result.code == 0, result.err
    assert calls == [("nvidia/segformer-b0-finetuned-cityscapes-1024-1024", "main")]
    labels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "pred" / "night_labelTrainIds.png"))
    from nightseg.core.io import read_image

    x = torch.from_numpy(read_image(image)).permute(2, 0, 1)[None].float() / 255.0
    expected = hf_logits(reference, x)[0].argmax(0).numpy().astype(np.uint8)
    assert (labels == expected).mean() > 0.999  # float32 (fused BatchNorm) vs float64: ties may flip
    # the source scored Cityscapes with 1024x1024 windows every 768 px (mmseg): carried in the metadata
    predictor = Predictor.from_checkpoint("hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024")
    assert predictor.sliding.window == (1024, 1024) and predictor.sliding.stride == (768, 768)
    assert predictor.sliding.blend == "uniform"
    assert Predictor.from_checkpoint(folder, sliding=False).sliding is None


def test_predict_hf_reference_with_official_relighting(tmp_path, hf_b0, run_cli, monkeypatch, realdata):
    folder, _ = hf_b0
    fake_hub(monkeypatch, folder)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    downloads = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        downloads.append(url)
        shutil.copyfile(realdata / "zero_dce" / "Epoch99.pth", dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    image = night_image(tmp_path)
    result = run_cli("predict", "hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024", image,
                     "--out", tmp_path / "pred", "--relight", "official", "--whole")
    assert result.code == 0, result.err
    assert len(downloads) == 1 and downloads[0].endswith("Epoch99.pth")
    plain = Predictor.from_checkpoint(folder, relight=False, sliding=False).predict(image, return_probs=True)
    relit = Predictor.from_checkpoint(folder, relight=realdata / "zero_dce" / "Epoch99.pth",
                                      sliding=False).predict(image, return_probs=True)
    written = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "pred" / "night_labelTrainIds.png"))
    assert np.array_equal(written, relit.labels)
    assert not torch.allclose(plain.probs, relit.probs)  # relighting changed what the segmenter saw


def test_offline_hf_reference_is_one_line_naming_url_and_folder(tmp_path, run_cli, monkeypatch):
    import huggingface_hub

    def offline(**kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    result = run_cli("import", "hf:nvidia/segformer-b2-finetuned-cityscapes-1024-1024", "--out", tmp_path / "o.safetensors")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "https://huggingface.co/nvidia/segformer-b2-finetuned-cityscapes-1024-1024" in result.err
    assert "config.json and model.safetensors" in result.err and not (tmp_path / "o.safetensors").exists()


def test_export_accepts_a_model_folder(tmp_path, hf_b0, run_cli):
    folder, _ = hf_b0
    out = tmp_path / "b0.onnx"
    result = run_cli("export", folder, "--out", out, "--size", "64x64")
    assert result.code == 0, result.err
    assert out.is_file() and "max |onnx - torch|" in result.out


def test_init_checkpoint_reference_loads_converted_weights(hf_b0):
    folder, _ = hf_b0
    model = build_segmenter("segformer_b0", layer_norm_eps=1e-5, sdpa=True)
    load_segmenter_weights(model, folder)  # method.init_checkpoint=FOLDER (or hf:...)
    converted = import_checkpoint(folder)
    for key, value in converted.tensors.items():
        assert torch.equal(model.state_dict()[key], value), key


# --------------------------------------------------------------------------------------------- classes
def test_ade20k_150_classes_refused_unless_mapped(tmp_path, run_cli):
    names = [f"ade{i}" for i in range(150)]
    names[6], names[2] = "road", "building"
    reference = hf_segformer(tmp_path / "ade", names=names, seed=4)
    refused = run_cli("import", tmp_path / "ade", "--out", tmp_path / "a.safetensors")
    assert refused.code == 2 and refused.err.count("\n") == 1
    assert "150 classes" in refused.err and "--class-map" in refused.err
    kept = run_cli("import", tmp_path / "ade", "--out", tmp_path / "keep.safetensors", "--class-map", "keep")
    assert kept.code == 0, kept.err
    assert load_checkpoint(tmp_path / "keep.safetensors")[1]["model"]["num_classes"] == 150
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(["road", "building", 0]))
    mapped = run_cli("import", tmp_path / "ade", "--out", tmp_path / "m.safetensors", "--class-map", mapping)
    assert mapped.code == 0, mapped.err
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    expected = hf_logits(reference, x)
    with torch.no_grad():
        ours = nightseg_model(tmp_path / "m.safetensors")(x.double())
    assert ours.shape[1] == 3
    for k, source in enumerate((6, 2, 0)):
        assert (ours[:, k] - expected[:, source]).abs().max() < TOL


# --------------------------------------------------------------------------------------------- bad input
def one_line_error(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)


def test_bad_inputs_are_one_line_errors(tmp_path, run_cli, hf_b0):
    out = tmp_path / "o.safetensors"
    odd = tmp_path / "odd.pth"
    torch.save({"state_dict": {"encoder.weird.weight": torch.zeros(2), "x.y": torch.zeros(1)}}, odd)
    one_line_error(run_cli("import", odd, "--out", out), "unknown checkpoint layout", "tried mmseg",
                   "encoder.weird.weight")

    good = tmp_path / "good.pth"
    torch.save({"a": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:300])
    one_line_error(run_cli("import", truncated, "--out", out), "truncated or not a PyTorch checkpoint")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint at all")
    one_line_error(run_cli("import", text, "--out", out), "not a PyTorch checkpoint")

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}, "hook": np.dtype("float32").type}, evil)
    result = run_cli("import", evil, "--out", out)
    one_line_error(result, "refused", "arbitrary code", "weights_only=True")

    no_config = tmp_path / "weights_only"
    no_config.mkdir()
    shutil.copy(hf_b0[0] / "model.safetensors", no_config / "model.safetensors")
    one_line_error(run_cli("import", no_config, "--out", out), "missing config.json")
    one_line_error(run_cli("predict", no_config, odd, "--out", tmp_path / "p"), "missing config.json")

    wrong_count = tmp_path / "wrong_count"
    shutil.copytree(hf_b0[0], wrong_count)
    config = json.loads((wrong_count / "config.json").read_text())
    config["id2label"] = {str(i): f"c{i}" for i in range(7)}
    (wrong_count / "config.json").write_text(json.dumps(config))
    one_line_error(run_cli("import", wrong_count, "--out", out), "names 7 classes", "19 outputs")

    other = tmp_path / "not_segformer"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    one_line_error(run_cli("import", other, "--out", out), "not a known model config")
    one_line_error(run_cli("import", hf_b0[0], "--out", out, "--format", "mmseg"), "reads a file")
    assert not out.exists()


def test_sdpa_attention_option_computes_the_same_function():
    """Imported SegFormers use torch's fused attention (`sdpa`, for speed at 1024x2048); it must compute
    what smp's explicit attention computes, in training mode (gradients) as in eval mode."""
    torch.manual_seed(0)
    plain = randomize(build_segmenter("segformer_b0"), seed=5).double()
    fused = build_segmenter("segformer_b0", sdpa=True).double().eval()
    fused.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (plain(x) - fused(x)).abs().max() < 1e-9
    for model in (plain, fused):
        model.train()
        model.zero_grad()
        model.head.dropout.p = 0.0  # the only randomness in training mode (drop path is off in eval only)
        for module in model.modules():
            if hasattr(module, "drop_prob"):
                module.drop_prob = 0.0
        model(x).square().mean().backward()
    grad = [p.grad for p in plain.parameters()], [p.grad for p in fused.parameters()]
    assert all((a - b).abs().max() < 1e-9 for a, b in zip(*grad))

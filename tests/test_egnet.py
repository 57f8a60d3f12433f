"""EGNet (Sec. 4): guidance layer (Eq. 1), exposure target, ablation variants, the recipe's loss,
a 2-step training run on the tiny synthetic preset, and inference from its checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nightseg.core.classes import IGNORE_INDEX
from nightseg.core.config import load_config
from nightseg.core.errors import UserError
from nightseg.models import build_segmenter
from nightseg.models.egnet import VARIANTS, EGNet, ExposureGuidance, egnet_tiny, exposure_map

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "cpu" / "egnet.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- guidance layer
def test_guidance_attention_matches_hand_computed_eq1():
    egl = ExposureGuidance(seg_channels=2, exp_channels=2, mode="attention", w1=1.0, w2=0.3)
    with torch.no_grad():
        egl.attention.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        egl.attention.bias.fill_(0.5)
    f_s = torch.tensor([[[[2.0, -4.0]], [[1.0, 0.0]]]])  # [1, 2, 1, 2]
    f_e = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
    # W * f_E + b: pixel 0: 1 - 1 + 0.5 = 0.5; pixel 1: 0 - 2 + 0.5 = -1.5
    r0, r1 = 1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(1.5))  # 0.622459, 0.182426
    expected = torch.tensor([[[[2 + 0.3 * 2 * r0, -4 + 0.3 * -4 * r1]], [[1 + 0.3 * r0, 0.0]]]], dtype=torch.float32)
    torch.testing.assert_close(egl(f_s, f_e), expected)
    assert egl(f_s, f_e)[0, 0, 0, 0].item() == pytest.approx(2.373475, abs=1e-5)
    torch.testing.assert_close(egl.attention_map(f_e), torch.tensor([[[[r0, r1]]]], dtype=torch.float32))


def test_guidance_other_modes_match_hand_computed_values():
    f_s = torch.tensor([[[[2.0, -4.0]], [[1.0, 3.0]]]])
    f_e = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
    summed = ExposureGuidance(2, 2, "sum", w1=1.0, w2=0.3)(f_s, f_e)
    torch.testing.assert_close(summed, torch.tensor([[[[2.3, -4.0]], [[1.3, 3.6]]]]))
    concat = ExposureGuidance(2, 2, "concat")
    torch.testing.assert_close(concat(f_s, f_e), f_s)  # starts as the identity on f_S
    exposure = torch.tensor([[[[0.5, 1.0]]]])
    guided = ExposureGuidance(2, 2, "exposure_attention", w1=1.0, w2=0.3)(f_s, exposure=exposure)
    torch.testing.assert_close(guided, torch.tensor([[[[2.3, -5.2]], [[1.15, 3.9]]]]))
    with pytest.raises(ValueError, match="mode"):
        ExposureGuidance(2, 2, "product")


# --------------------------------------------------------------------------------------------- exposure target
def test_exposure_map_is_hsv_value_area_averaged():
    image = torch.zeros(1, 3, 2, 4)
    image[0, 0] = torch.tensor([[0.2, 0.9, 0.0, 0.1], [0.4, 0.0, 1.0, 0.3]])
    image[0, 1] = torch.tensor([[0.5, 0.1, 0.0, 0.7], [0.1, 0.6, 0.0, 0.3]])
    image[0, 2] = torch.tensor([[0.0, 0.3, 0.8, 0.2], [0.2, 0.2, 0.0, 0.0]])
    v = torch.tensor([[0.5, 0.9, 0.8, 0.7], [0.4, 0.6, 1.0, 0.3]])
    torch.testing.assert_close(exposure_map(image)[0, 0], v)
    small = exposure_map(image, (1, 2))
    assert small.shape == (1, 1, 1, 2)
    torch.testing.assert_close(small[0, 0, 0], torch.tensor([(0.5 + 0.9 + 0.4 + 0.6) / 4, (0.8 + 0.7 + 1.0 + 0.3) / 4]))


# --------------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_and_runs_forward(variant):
    torch.manual_seed(0)
    model = egnet_tiny(variant=variant)
    x = torch.rand(2, 3, 32, 48)
    logits, m_e = model.forward_with_exposure(x)
    assert logits.shape == (2, 19, 32, 48) and torch.isfinite(logits).all()
    if variant in ("egnet", "no_egl", "concat", "sum"):
        assert m_e.shape == (2, 1, 4, 6) and 0 <= m_e.min() and m_e.max() <= 1  # output stride 8, sigmoid
    else:
        assert m_e is None and model.exposure_layers is None
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 19, 32, 48)
        torch.testing.assert_close(out, model.decode(model.encode(x), x.shape[-2:]))
        if variant == "extra_input":  # the V channel's stem weights start at zero (ImageNet RGB weights intact)
            torch.testing.assert_close(model.backbone.stem[0].weight[:, 3], torch.zeros(64, 7, 7))
    assert model.feature_channels == 256 and model.config["variant"] == variant


def test_no_es_is_pspnet_tiny_and_guidance_changes_features():
    plain = build_segmenter("pspnet_tiny")
    no_es = egnet_tiny(variant="no_es")
    assert no_es.state_dict().keys() == plain.state_dict().keys()
    no_es.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 32, 32)
    plain.eval(), no_es.eval()
    with torch.no_grad():
        torch.testing.assert_close(no_es(x), plain(x))
    # full EGNet vs the same weights without guidance: Eq. 1 scales f_S by 1 + 0.3 W_r, W_r in (0, 1)
    torch.manual_seed(0)
    full = egnet_tiny(variant="egnet").eval()
    no_egl = egnet_tiny(variant="no_egl").eval()
    no_egl.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("guidance")})
    with torch.no_grad():
        guided, unguided = full.encode(x), no_egl.encode(x)
    torch.testing.assert_close(guided[0], unguided[0])  # the shared stage 1
    assert not torch.allclose(guided[-1], unguided[-1])
    with pytest.raises(ValueError, match="variant"):
        egnet_tiny(variant="no_such")


def test_plain_segmenter_of_egnet_size():
    """`pspnet_tiny_wide` (the benchmark's same-size plain segmenter): pspnet_tiny with stages 2-3 1.375x wider,
    within 0.2 % of egnet_tiny's parameter count, OS 8, and no ImageNet weights to load."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    wide, tiny, egnet = build_segmenter("pspnet_tiny_wide"), build_segmenter("pspnet_tiny"), egnet_tiny()
    assert (count(tiny), count(wide), count(egnet)) == (3_145_107, 5_760_747, 5_771_030)
    assert wide.backbone.channels == [64, 176, 352] and wide.feature_channels == 352
    assert wide.backbone.stem[0].weight.shape == tiny.backbone.stem[0].weight.shape  # ResNet-18 stem + stage 1
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        features = wide.eval().encode(x)
    assert [tuple(f.shape[1:]) for f in features] == [(64, 8, 16), (176, 4, 8), (352, 4, 8)]
    assert wide.backbone.layers[2][1].conv1.dilation == (2, 2)  # stage 3 dilated, as in pspnet_tiny
    with pytest.raises(UserError, match="pspnet_tiny_wide: there are no ImageNet weights"):
        build_segmenter("pspnet_tiny_wide", pretrained=True)


def test_test_size_resizes_input_and_returns_frame_size():
    torch.manual_seed(0)
    model = egnet_tiny(test_size=[48, 48]).eval()
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        out = model(x)
        resized = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
        ref = model.decode(model.encode(resized), (32, 64))  # logits of the 48x48 input, upsampled to the frame
    assert out.shape == (1, 19, 32, 64)
    torch.testing.assert_close(out, ref)


def test_keep_aspect_test_resize_scales_isotropically_to_the_test_size_pixel_count():
    paper = egnet_tiny(test_size=[900, 900], test_resize="keep_aspect")
    assert paper.network_size((512, 1024)) == (636, 1273)  # x1.243 both ways, 810 k pixels like 900x900
    assert egnet_tiny(test_size=[900, 900]).network_size((512, 1024)) == (900, 900)  # stretch: x1.76 / x0.88
    assert egnet_tiny().network_size((512, 1024)) == (512, 1024)
    torch.manual_seed(0)
    model = egnet_tiny(test_size=[48, 48], test_resize="keep_aspect").eval()
    assert model.config["test_resize"] == "keep_aspect"
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        out = model(x)
        resized = F.interpolate(x, size=(34, 68), mode="bilinear", align_corners=False)  # sqrt(48*48/(32*64))
        ref = model.decode(model.encode(resized), (32, 64))
    assert out.shape == (1, 19, 32, 64)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="test_resize"):
        egnet_tiny(test_size=[48, 48], test_resize="crop")


# --------------------------------------------------------------------------------------------- recipe
def _module(overrides: list[str] = ()):
    from nightseg.methods.egnet import build

    cfg = load_config(CPU_CONFIG, ["train.cpu_threads=1", "data.workers=0", *overrides])
    torch.manual_seed(0)
    module = build(cfg)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # no trainer here
    return module, logged


def test_training_step_loss_is_alpha_ce_plus_beta_l1():
    module, logged = _module(["method.beta=0.5", "method.alpha=2.0"])
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=gen)
    label = torch.randint(0, 19, (2, 32, 32), generator=gen)
    label[:, :4] = IGNORE_INDEX
    batch = {"source": {"image": image, "label": label}}
    torch.manual_seed(5)
    total = module.training_step(batch, 0)
    torch.manual_seed(5)  # same dropout draw
    logits, m_e = module.model.forward_with_exposure(image)
    ce = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)
    v = F.avg_pool2d(image.amax(dim=1, keepdim=True), 8)  # 32 -> 4 at output stride 8
    l1 = (m_e - v).abs().mean()
    torch.testing.assert_close(total, 2.0 * ce + 0.5 * l1)
    assert logged["train/exposure_l1"] == pytest.approx(float(l1.detach()), rel=1e-5)
    assert logged["train/ce_source"] == pytest.approx(float(ce.detach()), rel=1e-5)


def test_training_step_joint_and_without_exposure_stream():
    module, logged = _module(["data.target={dataset: nightcity, root: NightCity, split: train, crop: [128, 128]}"])
    gen = torch.Generator().manual_seed(2)
    batch = {s: {"image": torch.rand(2, 3, 32, 32, generator=gen), "label": torch.randint(0, 19, (2, 32, 32), generator=gen)}
             for s in ("source", "target")}
    total = module.training_step(batch, 0)
    assert {"train/ce_source", "train/ce_target", "train/exposure_l1"} <= set(logged)
    expected = logged["train/ce_source"] + logged["train/ce_target"] + 0.01 * logged["train/exposure_l1"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    module, logged = _module(["model.options.variant=no_es"])
    total = module.training_step({"source": batch["source"]}, 0)
    assert "train/exposure_l1" not in logged and float(total.detach()) == pytest.approx(logged["train/ce_source"], rel=1e-6)


def test_recipe_refuses_a_non_egnet_model_and_unequal_joint_crops():
    with pytest.raises(UserError, match="EGNet model"):
        _module(["model.name=pspnet_tiny", "model.options={}"])
    with pytest.raises(UserError, match="equal crops"):
        _module(["data.target={dataset: nightcity, root: NightCity, split: train, crop: [64, 64]}"])


def test_every_egnet_config_loads():
    paths = sorted((REPO / "configs").rglob("egnet*.yaml"))
    assert len(paths) == 16
    for path in paths:
        cfg = load_config(path)
        assert cfg.method.name == "egnet" and cfg.method.alpha == 1.0 and cfg.method.beta == 0.01
        assert cfg.model.options["w1"] == 1.0 and cfg.model.options["w2"] == 0.3
        if "cpu" not in path.parts:
            assert cfg.model.name.endswith("egnet_r101") and cfg.model.options["test_size"] == [900, 900]
            assert cfg.model.options["test_resize"] == "keep_aspect"  # train/test geometry: docs/results.md
            assert cfg.data.source.crop == [300, 300] and cfg.optim.name == "sgd" and cfg.optim.poly_power == 0.9


# --------------------------------------------------------------------------------------------- train + predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from nightseg.pipelines.recipes import train_recipe
    from nightseg.synthetic import generator as synthetic

    root = tmp_path_factory.mktemp("egnet")
    counts = {"train": 0, "val": 0, "pairs": 0, "night_val": 2, "night_train": 4, "nightcity_val": 0}
    synthetic.generate(root / "data", preset="tiny", counts=counts, progress=False)
    ckpt = train_recipe("cpu/egnet.yaml", root / "data", root / "run", steps=2, seed=0,
                        extra=["train.cpu_threads=1", "data.workers=0", "data.source.crop=[64,64]",
                               "train.progress=false", "train.log_every=1"])
    return ckpt, root / "data"


def test_two_step_training_writes_a_checkpoint_that_predicts(trained, tmp_path, run_cli):
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.inference import Predictor

    ckpt, data = trained
    tensors, meta = load_checkpoint(ckpt)
    assert meta["step"] == 2 and meta["method"] == "egnet"
    assert meta["model"]["name"] == "nightseg.models.egnet:egnet_tiny" and meta["model"]["variant"] == "egnet"
    assert any(k.startswith("exposure_layers.") for k in tensors) and any(k.startswith("guidance.") for k in tensors)
    rows = list(csv.DictReader((ckpt.parents[1] / "logs" / "csv" / "metrics.csv").open()))
    l1 = [float(r["train/exposure_l1"]) for r in rows if r.get("train/exposure_l1")]
    assert len(l1) == 2 and all(0 < v < 1 for v in l1)
    # Predictor.from_checkpoint rebuilds the EGNet; its logits equal the trained model's forward
    seg = Predictor.from_checkpoint(ckpt, device="cpu")
    model = egnet_tiny()
    model.load_state_dict(tensors)
    model.eval()
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(seg.net(x), model(x), atol=1e-4, rtol=1e-4)  # BatchNorm folded
    assert isinstance(seg.net.segmenter, EGNet)
    # `nightseg predict` on the checkpoint
    images = data / "dark_zurich" / "rgb_anon" / "val" / "night"
    out = tmp_path / "pred"
    r = run_cli("predict", ckpt, images, "--out", out, "--device", "cpu", "--outputs", "labels")
    assert r.code == 0, r.err
    written = sorted(out.rglob("*_labelTrainIds.png"))
    assert len(written) == 2
    from nightseg.core.io import read_label

    first = sorted(images.rglob("*.png"))[0]
    labels = read_label(next(p for p in written if p.name.startswith(first.name.replace("_rgb_anon.png", ""))))
    assert labels.shape == (64, 128)
    np.testing.assert_array_equal(labels, seg.predict(first).labels)
    # and `nightseg evaluate` scores it
    r = run_cli("evaluate", ckpt, "--dataset", "dark_zurich", "--root", data / "dark_zurich", "--out", tmp_path / "ev",
                "--device", "cpu")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["num_images"] == 2 and 0 <= report["exposure"]["mEF1"] <= 1


def test_test_size_checkpoint_predicts_and_evaluates_at_the_frame_size(trained, tmp_path, run_cli):
    """The paper's 900x900 test input (configs/egnet*.yaml), scaled down to 48x48 for 64x128 frames: the
    CLI resizes each frame to test_size, segments it, and writes / scores the label map at the frame size."""
    from nightseg.core.checkpoint import load_checkpoint, save_checkpoint
    from nightseg.core.io import read_image, read_label
    from nightseg.inference import Predictor

    ckpt, data = trained
    tensors, meta = load_checkpoint(ckpt)
    sized = save_checkpoint(tmp_path / "egnet_test_size.safetensors", tensors,
                            {**meta, "model": {**meta["model"], "test_size": [48, 48]}})
    seg = Predictor.from_checkpoint(sized, device="cpu")
    assert seg.net.segmenter.test_size == (48, 48)
    assert seg.net.segmenter.test_resize == meta["model"]["test_resize"] == "keep_aspect"  # cpu/egnet.yaml
    model = egnet_tiny(test_size=[48, 48], test_resize="keep_aspect")
    model.load_state_dict(tensors)
    model.eval()
    images = data / "dark_zurich" / "rgb_anon" / "val" / "night"
    out = tmp_path / "pred"
    r = run_cli("predict", sized, images, "--out", out, "--device", "cpu", "--outputs", "labels")
    assert r.code == 0, r.err
    frames = sorted(images.rglob("*.png"))
    assert len(frames) == 2
    for frame in frames:
        labels = read_label(next(out.rglob(f"{frame.stem}_labelTrainIds.png")))
        assert labels.shape == (64, 128)  # the frame's size, not test_size
        np.testing.assert_array_equal(labels, seg.predict(frame).labels)
        x = torch.from_numpy(read_image(frame)).permute(2, 0, 1).float().div(255)[None]
        assert model.network_size((64, 128)) == (34, 68)  # 48x48's pixel count, the frame's aspect
        with torch.no_grad():  # logits of the 34x68 input, upsampled to the frame
            ref = model.decode(model.encode(F.interpolate(x, size=(34, 68), mode="bilinear", align_corners=False)),
                               (64, 128)).argmax(1)[0].numpy()
        assert (labels == ref).mean() > 0.99  # BatchNorm folding changes logits only by rounding
    r = run_cli("evaluate", sized, "--dataset", "dark_zurich", "--root", data / "dark_zurich", "--out", tmp_path / "ev",
                "--device", "cpu")
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["num_images"] == 2 and 0 <= report["mIoU"] <= 1


def test_no_es_training_equals_the_plain_segmenter_recipe(trained, tmp_path):
    """w/o ES trained by the egnet recipe is bit-identical to pspnet_tiny trained by the supervised recipe
    (same initialisation, data and loss), so the plain-segmenter row of docs/results.md is the w/o ES row."""
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.pipelines.recipes import train_recipe

    _, data = trained
    extra = ["train.cpu_threads=1", "data.workers=0", "data.source.crop=[64,64]", "train.progress=false"]
    runs = [train_recipe(config, data, tmp_path / config.replace("/", "_"), steps=2, seed=1, extra=extra)
            for config in ("cpu/egnet_no_es.yaml", "cpu/supervised_nightcity.yaml")]
    (a, meta), (b, _) = (load_checkpoint(p) for p in runs)
    assert meta["model"]["variant"] == "no_es" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

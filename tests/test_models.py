"""Segmenters: shapes, gradients, encode/decode split, weights fetching offline, checkpoint mismatches."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torchvision

from nightseg.core.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.core.errors import UserError
from nightseg.models import build_segmenter, fuse_batchnorm, list_segmenters
from nightseg.models.backbones import dilate_resnet

ALL = list_segmenters()
LARGE = {"segformer_b3", "segformer_b4", "segformer_b5", "pspnet_r50", "daformer_mitb5"}  # seconds each on 2 cores: the slow lane
CASES = [pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name for name in ALL]


@pytest.fixture(autouse=True)
def _fast_init(monkeypatch):
    """Seed, and swap timm's slow truncated-normal init (25 s for MiT-B5 on a loaded CPU) for normal_."""
    import segmentation_models_pytorch.encoders.mix_transformer as mit

    torch.manual_seed(0)
    monkeypatch.setattr(
        mit, "trunc_normal_", lambda tensor, std=1.0, **kw: torch.nn.init.normal_(tensor, 0.0, std)
    )


def test_list_has_required_models():
    required = {"pspnet_r101", "pspnet_r50", "deeplabv2_r101", "deeplabv3plus_r50", "lraspp_mobilenetv3",
                "pspnet_tiny_wide"}
    required |= {f"segformer_b{i}" for i in range(6)}
    assert required <= set(ALL)


_BUILT: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    """Build each model once for both tests (the 44M-parameter ones take seconds to build)."""
    if name not in _BUILT:
        _BUILT[name] = build_segmenter(name, num_classes=7)
    return _BUILT[name]


@pytest.mark.parametrize("name", CASES)
def test_shapes_and_encode_decode_split(name):
    model = _model(name).eval()
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        features = model.encode(x)
        logits = model.decode(features, (32, 64))
        direct = model(x)
    assert logits.shape == (1, 7, 32, 64)
    assert features[-1].shape[1] == model.feature_channels
    assert torch.equal(logits, direct)
    assert torch.isfinite(logits).all()
    assert model.config == {"name": name, "num_classes": 7}
    # ImageNet normalisation constants are buffers that stay out of checkpoints
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()


@pytest.mark.parametrize("name", CASES)
def test_gradients_reach_every_parameter(name):
    model = _model(name).train()
    _BUILT.pop(name, None)
    x = torch.rand(2, 3, 32, 32)
    target = torch.randint(0, 7, (2, 32, 32))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


def test_output_stride_and_odd_input_size():
    model = build_segmenter("pspnet_tiny").eval()
    with torch.no_grad():
        features = model.encode(torch.rand(1, 3, 65, 97))
        logits = model.decode(features, (65, 97))
    assert features[-1].shape[-2:] == (9, 13)  # output stride 8 (ceil of 65/8, 97/8)
    assert logits.shape == (1, 19, 65, 97)


def test_normalisation_inside_the_model():
    model = build_segmenter("pspnet_tiny").eval()
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.backbone((x - mean) / std)[-1]
        assert torch.allclose(model.encode(x)[-1], expected)


def test_dilation_matches_torchvision_for_bottleneck_resnets():
    ours = torchvision.models.resnet50(weights=None)
    dilate_resnet(ours, 8)
    theirs = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    convs = [(a, b) for a, b in zip(ours.modules(), theirs.modules()) if isinstance(a, torch.nn.Conv2d)]
    assert len(convs) == 53
    for a, b in convs:
        assert (a.stride, a.dilation, a.padding) == (b.stride, b.dilation, b.padding)


def test_unknown_model_and_bad_cross_attention_are_user_errors():
    with pytest.raises(UserError, match="pspnet_r101"):
        build_segmenter("pspnet_r1000")
    with pytest.raises(UserError, match="cross_attention"):
        build_segmenter("pspnet_tiny", cross_attention={"value": "dusk"})


def test_pretrained_offline_gives_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    for name in ("pspnet_r18", "lraspp_mobilenetv3"):
        with pytest.raises(UserError, match=r"could not be downloaded.*hub[/\\]checkpoints"):
            build_segmenter(name, pretrained=True)

    import segmentation_models_pytorch.encoders as smp_encoders

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(UserError, match="mit_b0.*could not be downloaded"):
        build_segmenter("segformer_b0", pretrained=True)


def test_pretrained_weights_are_loaded(monkeypatch):
    reference = torchvision.models.resnet18(weights=None).state_dict()
    reference = {k: torch.full_like(v, 0.125) if v.is_floating_point() else v for k, v in reference.items()}
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return reference

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    model = build_segmenter("pspnet_tiny", pretrained=True)
    assert urls and urls[0].endswith(".pth") and "resnet18" in urls[0]
    assert torch.all(model.backbone.stem[0].weight == 0.125)
    assert torch.all(model.backbone.layers[2][1].conv2.weight == 0.125)
    assert model.config == {"name": "pspnet_tiny", "num_classes": 19}  # rebuilding never downloads


def test_checkpoint_round_trip_and_mismatches(tmp_path):
    model = build_segmenter("pspnet_tiny", num_classes=19).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), {"model": model.config})
    tensors, meta = load_checkpoint(path)
    again = build_segmenter(**meta["model"]).eval()
    load_state_into(again, tensors, path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))

    with pytest.raises(UserError, match=r"m\.safetensors.*shape.*class count"):
        load_state_into(build_segmenter("pspnet_tiny", num_classes=7), tensors, path)
    with pytest.raises(UserError, match=r"m\.safetensors.*do not fit this architecture"):
        load_state_into(build_segmenter("segformer_b0"), tensors, path)
    with pytest.raises(UserError, match=r"m\.safetensors.*do not fit this architecture"):
        load_state_into(build_segmenter("pspnet_r18"), tensors, path)


def test_fuse_batchnorm_keeps_outputs():
    model = build_segmenter("pspnet_r18").eval()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), fused(x)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))

"""ImageNet encoders from a local file (``model.encoder_weights``): random weights saved in each public layout
(torchvision, timm, smp / NVlabs, mmseg, Hugging Face, mmcv V1c) load into the segmenters' encoders with
every value equal; wrong files are one line and exit 2; DAFormer's frozen ImageNet encoder comes from it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from nightseg.core.config import ModelConfig
from nightseg.core.errors import UserError
from nightseg.models.backbones import fetch_weights
from nightseg.models.registry import build_model
from test_engine import tiny_recipe, write_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchvision_key(key: str) -> str:
    """The torchvision ResNet key of a `ResNetBackbone` key (stem.0 = conv1, stem.1 = bn1, layers.i = layer{i+1})."""
    key = key.replace("stem.0.", "conv1.", 1).replace("stem.1.", "bn1.", 1)
    return re.sub(r"^layers\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)


def saved_resnet18(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random torchvision ResNet-18 (BN statistics randomised too) saved with torch.save; returns its state."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v + 7) for k, v in net.state_dict().items()}
    torch.save(state, path)
    return state


def assert_resnet_equal(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = backbone.state_dict()
    assert own, "no encoder tensors"
    for key, value in own.items():
        assert torch.equal(value, state[torchvision_key(key)]), key


# --------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", ["pspnet_r18", "pspnet_tiny"])
def test_torchvision_resnet_file_loads_exactly(tmp_path, name):
    state = saved_resnet18(tmp_path / "resnet18-f37072fd.pth")
    model = build_model(ModelConfig(name=name, encoder_weights=str(tmp_path / "resnet18-f37072fd.pth")))
    assert_resnet_equal(model.backbone, state)  # pspnet_tiny: its 3 stages; layer4 and fc are not used
    assert len(model.backbone.layers) == (4 if name == "pspnet_r18" else 3)
    # an old torchvision file (before BatchNorm counted its batches) loads too, the count at 0
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    model = build_model(ModelConfig(name=name, encoder_weights=str(tmp_path / "old.pth")))
    assert int(model.backbone.stem[1].num_batches_tracked) == 0
    assert torch.equal(model.backbone.layers[0][0].bn1.running_var, state["layer1.0.bn1.running_var"])


def test_timm_resnet_safetensors_and_training_checkpoint_load_exactly(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    net = timm.create_model("resnet18", pretrained=False)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))  # the hub's timm/resnet18.* file
    model = build_model(ModelConfig(name="pspnet_r18", encoder_weights=str(tmp_path / "model.safetensors")))
    assert_resnet_equal(model.backbone, state)
    # a timm training checkpoint: {"state_dict": {"module.*"}, "epoch": ...}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pth")
    model = build_model(ModelConfig(name="pspnet_r18", encoder_weights=str(tmp_path / "ckpt.pth")))
    assert_resnet_equal(model.backbone, state)


def test_torchvision_mobilenet_file_loads_exactly(tmp_path):
    torch.manual_seed(2)
    net = torchvision.models.mobilenet_v3_large(weights=None)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "mobilenet_v3_large-8738ca79.pth")
    model = build_model(ModelConfig(name="lraspp_mobilenetv3", encoder_weights=str(tmp_path / "mobilenet_v3_large-8738ca79.pth")))
    own = model.backbone.state_dict()
    assert len(own) == len([k for k in state if k.startswith("features.")])
    assert all(torch.equal(v, state[k]) for k, v in own.items())


def mit_b0_state(seed: int = 3) -> dict[str, torch.Tensor]:
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(seed)
    encoder = get_encoder("mit_b0", weights=None)
    return {k: torch.randn_like(v) for k, v in encoder.state_dict().items()}


def test_nvlabs_and_smp_mit_files_load_exactly(tmp_path):
    state = mit_b0_state()
    nvlabs = {**state, "head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}  # NVlabs' mit_b0.pth
    torch.save(nvlabs, tmp_path / "mit_b0.pth")
    save_file(state, str(tmp_path / "model.safetensors"))  # smp-hub/mit_b0.imagenet
    for name, file in (("segformer_b0", "mit_b0.pth"), ("daformer_mitb0", "model.safetensors")):
        model = build_model(ModelConfig(name=name, encoder_weights=str(tmp_path / file)))
        own = model.backbone.encoder.state_dict()
        assert sorted(own) == sorted(state) and all(torch.equal(own[k], state[k]) for k in own)


def test_mmseg_mit_file_loads_as_the_mmseg_converter_maps_it(tmp_path):
    """mmseg's MiT ImageNet file (``layers.i.0.projection``, packed in_proj): the encoder gets exactly the
    tensors that `nightseg import` gives the same backbone inside a whole mmseg SegFormer checkpoint."""
    from nightseg.models.pretrained import import_checkpoint
    from test_pretrained_mmseg import save_mmseg, segformer_sd

    full = segformer_sd()
    reference = import_checkpoint(save_mmseg(tmp_path / "segformer.pth", full)).tensors
    torch.save({"state_dict": {k.removeprefix("backbone."): v for k, v in full.items() if k.startswith("backbone.")},
                "meta": {"note": "mmseg pretrain"}}, tmp_path / "mit_b0_20220624-7e0fe6dd.pth")
    model = build_model(ModelConfig(name="segformer_b0", encoder_weights=str(tmp_path / "mit_b0_20220624-7e0fe6dd.pth")))
    own = model.backbone.state_dict()
    assert len(own) == len([k for k in reference if k.startswith("backbone.")])
    assert all(torch.equal(v, reference[f"backbone.{k}"]) for k, v in own.items())


def test_hugging_face_mit_file_computes_transformers_features(tmp_path):
    """``nvidia/mit-b0`` layout (SegformerForImageClassification): with transformers' LayerNorm eps the
    loaded encoder's four stages equal transformers' hidden states."""
    transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")
    from safetensors.torch import load_file

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(4)
    hf = transformers.SegformerForImageClassification(transformers.SegformerConfig(num_labels=1000)).eval()
    with torch.no_grad():
        for q in hf.parameters():
            q.copy_(torch.randn_like(q) * 0.2)
    hf.save_pretrained(tmp_path / "mit-b0")  # the hub's layout (segformer.encoder.block..., classifier)
    state = load_file(str(tmp_path / "mit-b0" / "model.safetensors"))
    model = build_model(ModelConfig(name="segformer_b0", encoder_weights=str(tmp_path / "mit-b0" / "model.safetensors"))).eval()
    own = model.backbone.encoder.state_dict()
    assert torch.equal(own["block1.0.attn.kv.weight"], torch.cat([state["segformer.encoder.block.0.0.attention.self.key.weight"],
                                                                  state["segformer.encoder.block.0.0.attention.self.value.weight"]]))
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-5  # transformers' eps everywhere (smp: 1e-6 in the blocks)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x)
        theirs = hf.segformer(x, output_hidden_states=True).hidden_states
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ours, theirs, strict=True))


def test_mmcv_v1c_file_loads_into_the_mmseg_resnet(tmp_path):
    from test_pretrained_mmseg import resnet_v1c

    sd: dict = {}
    resnet_v1c(sd, 50)
    state = {k.removeprefix("backbone."): v for k, v in sd.items()}
    torch.save({"state_dict": {**state, "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}},
               tmp_path / "resnet50_v1c-2cccc1ad.pth")
    model = build_model(ModelConfig(name="pspnet_r50_v1c", encoder_weights=str(tmp_path / "resnet50_v1c-2cccc1ad.pth")))
    own = model.backbone.state_dict()
    assert len(own) == len(state)
    assert all(torch.equal(v, state[re.sub(r"^layers\.(\d)", lambda m: f"layer{int(m.group(1)) + 1}", k)])
               for k, v in own.items())


# --------------------------------------------------------------------------------------------- wrong files
def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_wrong_files_are_one_line_and_exit_2_through_train(tmp_path, run_cli):
    state = saved_resnet18(tmp_path / "good.pth")
    recipe = tiny_recipe(max_steps=1, val_every=0)
    recipe["model"] = {"name": "pspnet_nano"}
    config = write_recipe(tmp_path, recipe)
    shapes = dict(state, **{"conv1.weight": torch.zeros(64, 3, 5, 5)})
    torch.save(shapes, tmp_path / "shapes.pth")
    extra = dict(state, **{"layer1.0.extra.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({**state, "hook": Evil()}, tmp_path / "evil.pth")  # loading it would call print
    expected = {
        "shapes.pth": ["conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7)"],
        "extra.pth": ["1 tensors have no place", "layer1.0.extra.weight"],
        "evil.pth": ["refused", "arbitrary code"],
    }
    for name, parts in expected.items():
        r = run_cli("train", "--config", config, f"model.encoder_weights={tmp_path / name}", "--out", tmp_path / f"run_{name}")
        assert r.code == 2, (name, r.err)
        line = one_line(r.err)
        assert str(tmp_path / name) in line and all(p in line for p in parts), line
        assert "this must never run" not in r.out


def test_wrong_family_and_unsupported_models_are_refused(tmp_path):
    saved_resnet18(tmp_path / "resnet18.pth")
    with pytest.raises(UserError, match=r"a ResNet \(torchvision / timm / smp layout\) file; this model's mit_b0 encoder"):
        build_model(ModelConfig(name="segformer_b0", encoder_weights=str(tmp_path / "resnet18.pth")))
    torch.save({"backbone.conv1.weight": torch.zeros(1), "decode_head.conv_seg.weight": torch.zeros(1)}, tmp_path / "seg.pth")
    with pytest.raises(UserError, match="a segmentation checkpoint, not an ImageNet encoder"):
        build_model(ModelConfig(name="pspnet_r18", encoder_weights=str(tmp_path / "seg.pth")))
    with pytest.raises(UserError, match=r"not a resnet50 encoder: 165 tensors missing .*layer1\.0\.conv3\.weight"):
        build_model(ModelConfig(name="pspnet_r50", encoder_weights=str(tmp_path / "resnet18.pth")))
    with pytest.raises(UserError, match="missing.pth: file not found"):
        build_model(ModelConfig(name="pspnet_r18", encoder_weights=str(tmp_path / "missing.pth")))
    with pytest.raises(UserError, match="no ImageNet weights for its widened stages"):
        build_model(ModelConfig(name="pspnet_tiny_wide", encoder_weights=str(tmp_path / "resnet18.pth")))
    with pytest.raises(UserError, match="builds no encoder that takes ImageNet weights from a file"):
        build_model(ModelConfig(name="test_engine:tiny_model", encoder_weights=str(tmp_path / "resnet18.pth")))


def test_offline_download_error_names_the_option():
    def offline():
        raise URLError("no network")

    with pytest.raises(UserError) as info:
        fetch_weights(offline, "https://download.pytorch.org/models/resnet18-f37072fd.pth", "/hub/checkpoints/x.pth")
    assert "model.encoder_weights=FILE" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- recipes
def test_train_and_daformer_feature_distance_take_the_file(tmp_path, synthetic_set, caplog):
    """Through the engine (what `nightseg train` builds): the student's encoder and DAFormer's frozen
    ImageNet encoder of the feature distance both hold the file's values, with no download."""
    from nightseg.engine import build_module
    from test_self_training import COUNTS, recipe_config

    state = saved_resnet18(tmp_path / "resnet18.pth")
    cfg = recipe_config("daformer", synthetic_set(COUNTS), tmp_path / "unused")
    assert cfg.model.name == "pspnet_nano" and not cfg.model.pretrained
    cfg.model.encoder_weights = str(tmp_path / "resnet18.pth")
    with caplog.at_level(logging.INFO, logger="nightseg.models"):
        module = build_module(cfg)
    assert "feature distance off" not in caplog.text and "resnet18 (ResNet (torchvision" in caplog.text
    assert module.imnet is not None and module.imnet is not module.model.backbone
    assert_resnet_equal(module.imnet, state)
    assert_resnet_equal(module.model.backbone, state)
    assert not any(q.requires_grad for q in module.imnet.parameters())

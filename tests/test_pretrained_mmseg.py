"""mmsegmentation checkpoints: random weights saved in mmseg's own layout (written here from mmseg's module
structure: ResNetV1c, PSPHead, DepthwiseSeparableASPPHead, MixVisionTransformer, SegformerHead) convert
with every source tensor consumed exactly once and every shape matching; the building blocks compute
what mmseg computes (functional references written from mmseg's forward passes). mmsegmentation itself
does not install on CPU here, so its model is not run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nightseg.core.checkpoint import load_checkpoint
from nightseg.core.classes import CLASS_NAMES
from nightseg.models import build_segmenter
from nightseg.models.pretrained import import_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GEN = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * 0.1


def bn(sd: dict, prefix: str, c: int) -> None:
    sd[f"{prefix}.weight"] = torch.rand(c, generator=GEN) + 0.5
    sd[f"{prefix}.bias"] = rand(c)
    sd[f"{prefix}.running_mean"] = rand(c)
    sd[f"{prefix}.running_var"] = torch.rand(c, generator=GEN) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def conv_module(sd: dict, prefix: str, cin: int, cout: int, k: int, groups: int = 1) -> None:
    """mmcv ConvModule with BN: bias-free conv + bn."""
    sd[f"{prefix}.conv.weight"] = rand(cout, cin // groups, k, k)
    bn(sd, f"{prefix}.bn", cout)


def separable(sd: dict, prefix: str, cin: int, cout: int) -> None:
    conv_module(sd, f"{prefix}.depthwise_conv", cin, cin, 3, groups=cin)
    conv_module(sd, f"{prefix}.pointwise_conv", cin, cout, 1)


def resnet_v1c(sd: dict, depth: int) -> None:
    for index, (cin, cout) in zip((0, 3, 6), ((3, 32), (32, 32), (32, 64))):
        sd[f"backbone.stem.{index}.weight"] = rand(cout, cin, 3, 3)
        bn(sd, f"backbone.stem.{index + 1}", cout)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6 if depth == 50 else 23, 3)), 1):
        for j in range(blocks):
            p = f"backbone.layer{layer}.{j}"
            sd[f"{p}.conv1.weight"] = rand(planes, inplanes, 1, 1)
            bn(sd, f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = rand(planes, planes, 3, 3)
            bn(sd, f"{p}.bn2", planes)
            sd[f"{p}.conv3.weight"] = rand(planes * 4, planes, 1, 1)
            bn(sd, f"{p}.bn3", planes * 4)
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = rand(planes * 4, inplanes, 1, 1)
                bn(sd, f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4


def aux_and_seg(sd: dict, channels: int) -> None:
    sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"] = rand(19, channels, 1, 1), rand(19)
    conv_module(sd, "auxiliary_head.convs.0", 1024, 256, 3)
    sd["auxiliary_head.conv_seg.weight"], sd["auxiliary_head.conv_seg.bias"] = rand(19, 256, 1, 1), rand(19)


def pspnet_sd(depth: int) -> dict:
    sd: dict = {}
    resnet_v1c(sd, depth)
    for k in range(4):
        conv_module(sd, f"decode_head.psp_modules.{k}.1", 2048, 512, 1)
    conv_module(sd, "decode_head.bottleneck", 2048 + 4 * 512, 512, 3)
    aux_and_seg(sd, 512)
    return sd


def deeplabv3plus_sd(depth: int) -> dict:
    sd: dict = {}
    resnet_v1c(sd, depth)
    conv_module(sd, "decode_head.image_pool.1", 2048, 512, 1)
    conv_module(sd, "decode_head.aspp_modules.0", 2048, 512, 1)
    for k in (1, 2, 3):
        separable(sd, f"decode_head.aspp_modules.{k}", 2048, 512)
    conv_module(sd, "decode_head.bottleneck", 5 * 512, 512, 3)
    conv_module(sd, "decode_head.c1_bottleneck", 256, 48, 1)
    separable(sd, "decode_head.sep_bottleneck.0", 512 + 48, 512)
    separable(sd, "decode_head.sep_bottleneck.1", 512, 512)
    aux_and_seg(sd, 512)
    return sd


MIT_B0 = {"dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "sr": (8, 4, 2, 1)}


def segformer_sd() -> dict:
    sd: dict = {}
    cin = 3
    for i, (d, depth, sr) in enumerate(zip(MIT_B0["dims"], MIT_B0["depths"], MIT_B0["sr"])):
        s = f"backbone.layers.{i}"
        k = 7 if i == 0 else 3
        sd[f"{s}.0.projection.weight"], sd[f"{s}.0.projection.bias"] = rand(d, cin, k, k), rand(d)
        sd[f"{s}.0.norm.weight"], sd[f"{s}.0.norm.bias"] = torch.rand(d, generator=GEN) + 0.5, rand(d)
        for j in range(depth):
            b = f"{s}.1.{j}"
            for norm in ("norm1", "norm2"):
                sd[f"{b}.{norm}.weight"], sd[f"{b}.{norm}.bias"] = torch.rand(d, generator=GEN) + 0.5, rand(d)
            sd[f"{b}.attn.attn.in_proj_weight"], sd[f"{b}.attn.attn.in_proj_bias"] = rand(3 * d, d), rand(3 * d)
            sd[f"{b}.attn.attn.out_proj.weight"], sd[f"{b}.attn.attn.out_proj.bias"] = rand(d, d), rand(d)
            if sr > 1:
                sd[f"{b}.attn.sr.weight"], sd[f"{b}.attn.sr.bias"] = rand(d, d, sr, sr), rand(d)
                sd[f"{b}.attn.norm.weight"], sd[f"{b}.attn.norm.bias"] = torch.rand(d, generator=GEN) + 0.5, rand(d)
            sd[f"{b}.ffn.layers.0.weight"], sd[f"{b}.ffn.layers.0.bias"] = rand(4 * d, d, 1, 1), rand(4 * d)
            sd[f"{b}.ffn.layers.1.weight"], sd[f"{b}.ffn.layers.1.bias"] = rand(4 * d, 1, 3, 3), rand(4 * d)
            sd[f"{b}.ffn.layers.4.weight"], sd[f"{b}.ffn.layers.4.bias"] = rand(d, 4 * d, 1, 1), rand(d)
        sd[f"{s}.2.weight"], sd[f"{s}.2.bias"] = torch.rand(d, generator=GEN) + 0.5, rand(d)
        cin = d
    for i, d in enumerate(MIT_B0["dims"]):
        conv_module(sd, f"decode_head.convs.{i}", d, 256, 1)
    conv_module(sd, "decode_head.fusion_conv", 4 * 256, 256, 1)
    sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"] = rand(19, 256, 1, 1), rand(19)
    return sd


def save_mmseg(path: Path, sd: dict, classes=CLASS_NAMES) -> Path:
    torch.save({"meta": {"CLASSES": tuple(classes), "PALETTE": [[0, 0, 0]] * len(classes)}, "state_dict": sd}, path)
    return path


# --------------------------------------------------------------------------------------------- functional references
def cm(x, sd, p, padding=0, dilation=1, groups=1):
    """mmcv ConvModule (conv -> BN eval -> ReLU) from the source tensors."""
    x = F.conv2d(x, sd[f"{p}.conv.weight"], None, 1, padding, dilation, groups)
    x = F.batch_norm(x, sd[f"{p}.bn.running_mean"], sd[f"{p}.bn.running_var"], sd[f"{p}.bn.weight"],
                     sd[f"{p}.bn.bias"], False, 0.0, 1e-5)
    return F.relu(x)


def sep(x, sd, p, dilation=1):
    x = cm(x, sd, f"{p}.depthwise_conv", padding=dilation, dilation=dilation, groups=x.shape[1])
    return cm(x, sd, f"{p}.pointwise_conv")


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def mmseg_psp_head(x, sd):
    """mmseg PSPHead.forward: [x, PPM(x)...] -> bottleneck -> cls_seg."""
    outs = [x] + [resize(cm(F.adaptive_avg_pool2d(x, s), sd, f"decode_head.psp_modules.{k}.1"), x.shape[2:])
                  for k, s in enumerate((1, 2, 3, 6))]
    out = cm(torch.cat(outs, 1), sd, "decode_head.bottleneck", padding=1)
    return F.conv2d(out, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def mmseg_aspp_head(c1, x, sd):
    """mmseg DepthwiseSeparableASPPHead.forward (dilations 1, 12, 24, 36; c1 = stage-1 features)."""
    outs = [resize(cm(F.adaptive_avg_pool2d(x, 1), sd, "decode_head.image_pool.1"), x.shape[2:]),
            cm(x, sd, "decode_head.aspp_modules.0")]
    outs += [sep(x, sd, f"decode_head.aspp_modules.{k}", d) for k, d in ((1, 12), (2, 24), (3, 36))]
    out = cm(torch.cat(outs, 1), sd, "decode_head.bottleneck", padding=1)
    low = cm(c1, sd, "decode_head.c1_bottleneck")
    out = torch.cat([resize(out, low.shape[2:]), low], 1)
    out = sep(sep(out, sd, "decode_head.sep_bottleneck.0"), sd, "decode_head.sep_bottleneck.1")
    return F.conv2d(out, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def mmseg_segformer_head(features, sd):
    """mmseg SegformerHead.forward: ConvModule per stage, resize to stage 1, concat in order, fuse, cls."""
    outs = [resize(cm(f, sd, f"decode_head.convs.{i}"), features[0].shape[2:]) for i, f in enumerate(features)]
    out = cm(torch.cat(outs, 1), sd, "decode_head.fusion_conv")
    return F.conv2d(out, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def imported(path: Path):
    converted = import_checkpoint(path)  # verify=True: strict load, every shape equal
    config = dict(converted.model)
    model = build_segmenter(config.pop("name"), **config).eval()
    model.load_state_dict(converted.tensors)
    return converted, model


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("arch", "depth", "name"), [
    ("pspnet", 50, "pspnet_r50_v1c"), ("pspnet", 101, "pspnet_r101_v1c"),
    ("deeplabv3plus", 50, "deeplabv3plus_r50_v1c"), ("deeplabv3plus", 101, "deeplabv3plus_r101_v1c"),
])
def test_resnet_models_consume_every_tensor_once(tmp_path, run_cli, arch, depth, name):
    sd = (pspnet_sd if arch == "pspnet" else deeplabv3plus_sd)(depth)
    path = save_mmseg(tmp_path / f"{arch}_r{depth}-d8_cityscapes.pth", sd)
    out = tmp_path / "m.safetensors"
    result = run_cli("import", path, "--out", out)
    assert result.code == 0, result.err
    tensors, meta = load_checkpoint(out)
    assert meta["model"]["name"] == name and meta["pretrained"]["format"] == "mmseg"
    aux = [k for k in sd if k.startswith("auxiliary_head.")]
    assert meta["pretrained"]["consumed"] == len(sd)  # every tensor, auxiliary head (dropped) included
    own = sum(1 for k in sd if not k.startswith("auxiliary_head."))
    assert len(tensors) == own and len(aux) > 0  # one NightSeg tensor per non-auxiliary source tensor
    assert torch.equal(tensors["backbone.stem.3.weight"], sd["backbone.stem.3.weight"])
    assert torch.equal(tensors["backbone.layers.2.5.conv2.weight"], sd["backbone.layer3.5.conv2.weight"])
    assert torch.equal(tensors["head.classifier.weight"], sd["decode_head.conv_seg.weight"])
    assert meta["pretrained"]["classes"] == list(CLASS_NAMES)


def test_psp_head_and_deep_stem_compute_what_mmseg_computes(tmp_path):
    sd = pspnet_sd(50)
    _, model = imported(save_mmseg(tmp_path / "psp.pth", sd))
    x = torch.randn(1, 2048, 9, 11, generator=GEN)
    with torch.no_grad():
        assert (model.head([x]) - mmseg_psp_head(x, sd)).abs().max() < 1e-4
        image = torch.randn(1, 3, 64, 64, generator=GEN)
        ref = image
        for i in (0, 3, 6):  # ResNetV1c deep stem: 3x (conv3x3 -> BN -> ReLU), stride 2 first, then max pool
            ref = F.conv2d(ref, sd[f"backbone.stem.{i}.weight"], None, 2 if i == 0 else 1, 1)
            p = f"backbone.stem.{i + 1}"
            ref = F.relu(F.batch_norm(ref, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                                      sd[f"{p}.bias"], False, 0.0, 1e-5))
        ref = F.max_pool2d(ref, 3, 2, 1)
        assert (model.backbone.stem(image) - ref).abs().max() < 1e-4
    # mmseg's D8 (strides 1,2,1,1; dilations 1,1,2,4; contract_dilation): first block of a dilated stage
    # keeps the previous dilation
    layers = model.backbone.layers
    assert [b.conv2.dilation[0] for b in layers[2]] == [1] + [2] * 5
    assert [b.conv2.dilation[0] for b in layers[3]] == [2, 4, 4]
    assert all(b.conv2.stride == (1, 1) for b in (*layers[2], *layers[3]))
    assert layers[1][0].conv2.stride == (2, 2)  # stride on the 3x3 conv (style="pytorch")


def test_separable_aspp_head_computes_what_mmseg_computes(tmp_path):
    sd = deeplabv3plus_sd(50)
    _, model = imported(save_mmseg(tmp_path / "dl.pth", sd))
    c1, x = torch.randn(1, 256, 20, 24, generator=GEN), torch.randn(1, 2048, 10, 12, generator=GEN)
    with torch.no_grad():
        assert (model.head([c1, x]) - mmseg_aspp_head(c1, x, sd)).abs().max() < 1e-4


def test_mmseg_segformer_consumes_every_tensor_and_blocks_match(tmp_path, run_cli):
    sd = segformer_sd()
    path = save_mmseg(tmp_path / "segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.pth", sd)
    out = tmp_path / "s.safetensors"
    assert run_cli("import", path, "--out", out).code == 0
    meta = load_checkpoint(out)[1]
    assert meta["model"] == {"name": "segformer_b0", "num_classes": 19, "layer_norm_eps": 1e-6, "head": "mmseg",
                             "sdpa": True}
    assert meta["pretrained"]["consumed"] == len(sd)
    assert meta["pretrained"]["preprocessing"]["test"] == {"mode": "slide", "window": [1024, 1024],
                                                           "stride": [768, 768], "blend": "uniform"}
    _, model = imported(path)
    enc = model.backbone.encoder
    assert all(m.eps == 1e-6 for m in enc.modules() if isinstance(m, torch.nn.LayerNorm))
    # attention: mmseg's nn.MultiheadAttention(query=x, key=value=norm(sr(x))) with packed in_proj
    d, heads, h, w = 64, 2, 8, 6
    tokens = torch.randn(2, h * w, d, generator=GEN)
    b = "backbone.layers.1.1.0"
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    mha.load_state_dict({"in_proj_weight": sd[f"{b}.attn.attn.in_proj_weight"], "in_proj_bias": sd[f"{b}.attn.attn.in_proj_bias"],
                         "out_proj.weight": sd[f"{b}.attn.attn.out_proj.weight"], "out_proj.bias": sd[f"{b}.attn.attn.out_proj.bias"]})
    kv = F.conv2d(tokens.transpose(1, 2).reshape(2, d, h, w), sd[f"{b}.attn.sr.weight"], sd[f"{b}.attn.sr.bias"], stride=4)
    kv = F.layer_norm(kv.flatten(2).transpose(1, 2), (d,), sd[f"{b}.attn.norm.weight"], sd[f"{b}.attn.norm.bias"], 1e-6)
    with torch.no_grad():
        expected = mha.eval()(tokens, kv, kv)[0]
        assert (enc.block2[0].attn(tokens, h, w) - expected).abs().max() < 1e-5
        # Mix-FFN: 1x1 conv, 3x3 depthwise conv, GELU, 1x1 conv on the token map
        grid = tokens.transpose(1, 2).reshape(2, d, h, w)
        ffn = F.conv2d(grid, sd[f"{b}.ffn.layers.0.weight"], sd[f"{b}.ffn.layers.0.bias"])
        ffn = F.gelu(F.conv2d(ffn, sd[f"{b}.ffn.layers.1.weight"], sd[f"{b}.ffn.layers.1.bias"], padding=1, groups=4 * d))
        ffn = F.conv2d(ffn, sd[f"{b}.ffn.layers.4.weight"], sd[f"{b}.ffn.layers.4.bias"]).flatten(2).transpose(1, 2)
        assert (enc.block2[0].mlp(tokens, h, w) - ffn).abs().max() < 1e-5
        features = [torch.randn(1, c, 32 // 2**i, 48 // 2**i, generator=GEN) for i, c in enumerate(MIT_B0["dims"])]
        assert (model.head(features) - mmseg_segformer_head(features, sd)).abs().max() < 1e-4


def test_mmseg_class_order_and_unknown_heads(tmp_path, run_cli):
    sd = pspnet_sd(50)
    ade = save_mmseg(tmp_path / "ade.pth", {**sd, "decode_head.conv_seg.weight": rand(150, 512, 1, 1),
                                              "decode_head.conv_seg.bias": rand(150)}, [f"c{i}" for i in range(150)])
    result = run_cli("import", ade, "--out", tmp_path / "a.safetensors")
    assert result.code == 2 and "150 classes" in result.err and result.err.count("\n") == 1
    fcn = {k: v for k, v in sd.items() if not k.startswith("decode_head.")}
    conv_module(fcn, "decode_head.convs.0", 2048, 512, 3)
    fcn["decode_head.conv_seg.weight"], fcn["decode_head.conv_seg.bias"] = rand(19, 512, 1, 1), rand(19)
    result = run_cli("import", save_mmseg(tmp_path / "fcn.pth", fcn), "--out", tmp_path / "f.safetensors")
    assert result.code == 2 and "not supported" in result.err and "PSPHead" in result.err
    extra = save_mmseg(tmp_path / "extra.pth", {**sd, "decode_head.extra_conv.weight": rand(4, 4)})
    result = run_cli("import", extra, "--out", tmp_path / "e.safetensors")
    assert result.code == 2 and "decode_head.extra_conv.weight" in result.err and "no place" in result.err

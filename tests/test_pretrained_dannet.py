"""DANNet's released networks: random weights in its state-dict layout (written here from its network code's
module structure: network/pspnet.py, network/deeplab.py, network/refinenet.py, network/relighting.py) convert
with every tensor consumed once and every shape matching; the parts that differ from NightSeg's networks, and
(at a small width) the whole DeepLab-v2 and RefineNet pipelines of DANNet's evaluate.py, compute what DANNet's
code computes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nightseg.core.checkpoint import load_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.factory import import_factory
from nightseg.inference import load_inference_net
from nightseg.models.dannet import class_prior_weights
from nightseg.models.pretrained import dannet as dannet_format
from nightseg.models.pretrained import import_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GEN = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * 0.1


def bn(sd: dict, p: str, c: int) -> None:
    sd[f"{p}.weight"], sd[f"{p}.bias"] = torch.rand(c, generator=GEN) + 0.5, rand(c)
    sd[f"{p}.running_mean"], sd[f"{p}.running_var"] = rand(c), torch.rand(c, generator=GEN) + 0.5
    sd[f"{p}.num_batches_tracked"] = torch.tensor(7)


def dannet_pspnet_sd() -> dict:
    """DANNet's PSPNet(num_classes=19) state dict: deep stem 3-64-64-128, ResNet-101 bottlenecks, PSPModule,
    classifier, auxiliary dsn head."""
    sd: dict = {}
    for name, cin, cout in (("1", 3, 64), ("2", 64, 64), ("3", 64, 128)):
        sd[f"conv{name}.weight"] = rand(cout, cin, 3, 3)
        bn(sd, f"bn{name}", cout)
    inplanes = 128
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3)), 1):
        for j in range(blocks):
            p = f"layer{layer}.{j}"
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
    for k in range(4):
        sd[f"head.0.stages.{k}.1.weight"] = rand(512, 2048, 1, 1)
    sd["head.0.bottleneck.0.weight"] = rand(512, 2048 + 4 * 512, 3, 3)
    bn(sd, "head.0.bottleneck.1", 512)
    sd["head.1.weight"], sd["head.1.bias"] = rand(19, 512, 1, 1), rand(19)
    sd["dsn.0.weight"], sd["dsn.0.bias"] = rand(512, 1024, 3, 3), rand(512)
    bn(sd, "dsn.1", 512)
    sd["dsn.3.weight"], sd["dsn.3.bias"] = rand(19, 512, 1, 1), rand(19)
    return sd


def lightnet_sd() -> dict:
    """DANNet's LightNet = ResnetGenerator(3, 3, 64, BatchNorm2d, n_blocks=3) state dict."""
    sd: dict = {"model.1.weight": rand(64, 3, 7, 7)}
    bn(sd, "model.2", 64)
    sd["model.4.weight"] = rand(128, 64, 3, 3)
    bn(sd, "model.5", 128)
    sd["model.7.weight"] = rand(256, 128, 3, 3)
    bn(sd, "model.8", 256)
    for i in (10, 11, 12):
        for conv, norm in ((1, 2), (5, 6)):
            sd[f"model.{i}.conv_block.{conv}.weight"] = rand(256, 256, 3, 3)
            bn(sd, f"model.{i}.conv_block.{norm}", 256)
    sd["model.13.weight"] = rand(256, 128, 3, 3)  # ConvTranspose2d: [in, out, k, k]
    bn(sd, "model.14", 128)
    sd["model.16.weight"] = rand(128, 64, 3, 3)
    bn(sd, "model.17", 64)
    sd["model.20.weight"], sd["model.20.bias"] = rand(3, 64, 7, 7), rand(3)
    return sd


def norm(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict, dict]:
    folder = tmp_path_factory.mktemp("trained_models")
    psp, light = dannet_pspnet_sd(), lightnet_sd()
    torch.save(psp, folder / "dannet_psp.pth")
    torch.save(light, folder / "dannet_psp_light.pth")
    return folder, psp, light


def test_adapted_release_folder_consumes_both_files(release, run_cli, tmp_path):
    folder, psp, light = release
    out = tmp_path / "dannet.safetensors"
    result = run_cli("import", folder, "--out", out)
    assert result.code == 0, result.err
    tensors, meta = load_checkpoint(out)
    assert meta["model"] == {"name": "nightseg.models.dannet:dannet_pspnet", "num_classes": 19, "light": True,
                             "align_corners": True, "class_prior_std": 0.16}
    assert meta["pretrained"]["consumed"] == len(psp) + len(light)
    assert len(tensors) == len(psp) - sum(k.startswith("dsn.") for k in psp) + len(light)
    assert torch.equal(tensors["backbone.layer3.7.conv2.weight"], psp["layer3.7.conv2.weight"])
    assert torch.equal(tensors["light.model.13.weight"], light["model.13.weight"])
    net, _ = load_inference_net(out)  # predict / evaluate rebuild it from the metadata
    assert net(torch.rand(1, 3, 64, 96)).shape == (1, 19, 64, 96)


def test_single_pspnet_file_is_the_cityscapes_initialisation(release, tmp_path):
    folder, psp, light = release
    alone = tmp_path / "pretrain_pspnet_150000.pth"  # no NAME_light.pth beside it
    alone.symlink_to(folder / "dannet_psp.pth")
    converted = import_checkpoint(alone)
    assert converted.model == {"name": "nightseg.models.dannet:dannet_pspnet", "num_classes": 19, "light": False,
                               "align_corners": True}
    assert converted.pretrained["consumed"] == len(psp)
    # the release's file with dannet_psp_light.pth beside it is the adapted model, LightNet included
    adapted = import_checkpoint(folder / "dannet_psp.pth", verify=False)
    assert adapted.model["light"] is True and adapted.model["class_prior_std"] == 0.16
    assert adapted.pretrained["files"] == ["dannet_psp.pth", "dannet_psp_light.pth"]
    assert adapted.pretrained["consumed"] == len(psp) + len(light)


def test_dannet_building_blocks_compute_what_its_code_computes(release):
    folder, psp, light = release
    converted = import_checkpoint(folder)
    from nightseg.models.dannet import dannet_pspnet

    model = dannet_pspnet(light=True, class_prior_std=0.16).eval()
    model.load_state_dict(converted.tensors)
    with torch.no_grad():
        # PSPModule: bins = pool + bare 1x1 conv, upsampled with align_corners=True, [bins..., x], 3x3 conv + BN
        x = torch.randn(1, 2048, 9, 11, generator=GEN)
        bins = [F.interpolate(F.conv2d(F.adaptive_avg_pool2d(x, s), psp[f"head.0.stages.{k}.1.weight"]), size=(9, 11),
                              mode="bilinear", align_corners=True) for k, s in enumerate((1, 2, 3, 6))]
        ref = norm(F.conv2d(torch.cat([*bins, x], 1), psp["head.0.bottleneck.0.weight"], padding=1), psp, "head.0.bottleneck.1")
        ref = F.conv2d(ref, psp["head.1.weight"], psp["head.1.bias"])
        assert (model.head([x]) - ref).abs().max() < 1e-4
        # deep stem 3-64-64-128 (ReLU each), ceil-mode max pooling
        image = torch.randn(1, 3, 66, 66, generator=GEN)
        y = image
        for i, stride in ((1, 2), (2, 1), (3, 1)):
            y = F.relu(norm(F.conv2d(y, psp[f"conv{i}.weight"], stride=stride, padding=1), psp, f"bn{i}"))
        y = F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        b = model.backbone
        ours = b.maxpool(b.relu(b.bn3(b.conv3(b.relu(b.bn2(b.conv2(b.relu(b.bn1(b.conv1(image))))))))))
        assert ours.shape == y.shape and (ours - y).abs().max() < 1e-4
        # LightNet residual block: reflect-pad, conv, BN, ReLU, reflect-pad, conv, BN, + input
        t = torch.randn(1, 256, 6, 7, generator=GEN)
        p = "model.10.conv_block"
        r = F.relu(norm(F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), light[f"{p}.1.weight"]), light, f"{p}.2"))
        r = norm(F.conv2d(F.pad(r, (1, 1, 1, 1), mode="reflect"), light[f"{p}.5.weight"]), light, f"{p}.6")
        assert (model.light.model[10](t) - (t + r)).abs().max() < 1e-4
    # dilations: layer3 every block 2, layer4 every block 4 (multi-grid 1,1,1; no contraction)
    assert {blk.conv2.dilation[0] for blk in model.backbone.layer3} == {2}
    assert {blk.conv2.dilation[0] for blk in model.backbone.layer4} == {4}
    # evaluate.py's weights: (mean(log f) - log f) / std(log f) * 0.16 + 1 (road smallest, bicycle-rare largest)
    w = class_prior_weights(0.16)
    log_f = [math.log(f) for f in (0.36869696, 0.00098658)]
    assert w.argmin() == 0 and w.argmax() == 17 and w[0] < 1 < w[17]
    assert float(w[17] - w[0]) == pytest.approx((log_f[0] - log_f[1]) / float(torch.log(torch.tensor(
        [0.36869696, 0.06084986, 0.22824049, 0.00655399, 0.00877272, 0.01227341, 0.00207795, 0.0055127, 0.15928651,
         0.01157818, 0.04018982, 0.01218957, 0.00135122, 0.06994545, 0.00267456, 0.00235192, 0.00232904, 0.00098658,
         0.00413907])).std()) * 0.16, rel=1e-5)


# --- DeepLab-v2 and RefineNet: DANNet's layouts, built from network/deeplab.py and network/refinenet.py -------

RESNET101 = (3, 4, 23, 3)
TINY = dict(width=8, layers=(1, 1, 2, 1))  # every kind of block (first / later, dilated) at a small width
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def meta_bn(sd: dict, p: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{p}.{name}"] = meta(c)
    sd[f"{p}.num_batches_tracked"] = torch.empty((), dtype=torch.long, device="meta")


def encoder_sd(sd: dict, width: int, layers, t, b) -> None:
    """conv1 7x7 + bn1, then 4 stages of bottlenecks (planes width * 2^i, x4 out; a projection in each first)."""
    sd["conv1.weight"] = t(width, 3, 7, 7)
    b(sd, "bn1", width)
    inplanes = width
    for stage, blocks in enumerate(layers):
        planes = width * 2**stage
        for j in range(blocks):
            p = f"layer{stage + 1}.{j}"
            sd[f"{p}.conv1.weight"] = t(planes, inplanes, 1, 1)
            b(sd, f"{p}.bn1", planes)
            sd[f"{p}.conv2.weight"] = t(planes, planes, 3, 3)
            b(sd, f"{p}.bn2", planes)
            sd[f"{p}.conv3.weight"] = t(planes * 4, planes, 1, 1)
            b(sd, f"{p}.bn3", planes * 4)
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = t(planes * 4, inplanes, 1, 1)
                b(sd, f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4


def deeplab_sd(width: int = 64, layers=RESNET101, classes: int = 19, t=rand, b=bn) -> dict:
    """DANNet's Deeplab(num_classes): ResNetMulti with layer5 (on layer3) and layer6 (on layer4) classifiers,
    each four 3x3 convs (dilation 6, 12, 18, 24) with biases."""
    sd: dict = {}
    encoder_sd(sd, width, layers, t, b)
    for name, cin in (("layer5", width * 16), ("layer6", width * 32)):
        for i in range(4):
            sd[f"{name}.conv2d_list.{i}.weight"], sd[f"{name}.conv2d_list.{i}.bias"] = t(classes, cin, 3, 3), t(classes)
    return sd


def rcu_sd(sd: dict, p: str, c: int, blocks: int, t) -> None:
    for i in range(1, blocks + 1):
        sd[f"{p}.0.{i}_conv.weight"], sd[f"{p}.0.{i}_conv.bias"] = t(c, c, 3, 3), t(c)
        sd[f"{p}.0.{i}_conv_relu_varout_dimred.weight"] = t(c, c, 3, 3)


def refinenet_sd(width: int = 64, layers=RESNET101, classes: int = 19, t=rand, b=bn) -> dict:
    """DANNet's RefineNet(num_classes, imagenet=False): ResNet + the four refinement levels + clf_conv."""
    sd: dict = {}
    encoder_sd(sd, width, layers, t, b)

    def t(*shape, t=t):  # no BN after the encoder: keep each random conv's gain near 0.5 (values stay O(1))
        return t(*shape) * (5.0 / math.sqrt(math.prod(shape[1:]))) if len(shape) == 4 else t(*shape)

    top, rest = width * 8, width * 4
    for k, cin in zip((1, 2, 3, 4), (width * 32, width * 16, width * 8, width * 4)):
        c = top if k == 1 else rest
        sd[f"p_ims1d2_outl{k}_dimred.weight"] = t(c, cin, 3, 3)
        rcu_sd(sd, f"adapt_stage{k}_b", c, 2, t)
        if k > 1:
            sd[f"adapt_stage{k}_b2_joint_varout_dimred.weight"] = t(c, c, 3, 3)
        for i in range(1, 5):
            sd[f"mflow_conv_g{k}_pool.0.{i}_outvar_dimred.weight"] = t(c, c, 3, 3)
        rcu_sd(sd, f"mflow_conv_g{k}_b", c, 3, t)
        if k < 4:
            sd[f"mflow_conv_g{k}_b3_joint_varout_dimred.weight"] = t(rest, c, 3, 3)
    sd["clf_conv.weight"], sd["clf_conv.bias"] = t(classes, rest, 3, 3), t(classes)
    return sd


# functional references, one line of DANNet's forward at a time (weights looked up by DANNet's own keys)

def ref_encoder(sd: dict, x: torch.Tensor, layers, deeplab: bool) -> list[torch.Tensor]:
    """deeplab.py: stride on the 1x1 conv, layer3/4 dilated 2/4, ceil-mode pool; refinenet.py: torchvision
    bottlenecks (stride on the 3x3), strides 1, 2, 2, 2, floor-mode pool."""
    y = F.relu(norm(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    y = F.max_pool2d(y, 3, 2, 1, ceil_mode=deeplab)
    strides, dilations = ((1, 2, 1, 1), (1, 1, 2, 4)) if deeplab else ((1, 2, 2, 2), (1, 1, 1, 1))
    features = []
    for stage, (blocks, stride, d) in enumerate(zip(layers, strides, dilations), 1):
        for j in range(blocks):
            p, s = f"layer{stage}.{j}", stride if j == 0 else 1
            out = F.relu(norm(F.conv2d(y, sd[f"{p}.conv1.weight"], stride=s if deeplab else 1), sd, f"{p}.bn1"))
            out = F.relu(norm(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=1 if deeplab else s, padding=d,
                                       dilation=d), sd, f"{p}.bn2"))
            out = norm(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            shortcut = norm(F.conv2d(y, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1") if j == 0 else y
            y = F.relu(out + shortcut)
        features.append(y)
    return features


def ref_deeplab(sd: dict, x: torch.Tensor, layers, branches: int = 2) -> torch.Tensor:
    """Deeplab.forward's second output: Classifier_Module(layer4). Its loop `out += conv[i + 1](x); return out`
    returns after the first addition, so only conv2d_list 0 and 1 count (`branches=4`: the intended sum)."""
    x4 = ref_encoder(sd, x, layers, deeplab=True)[-1]
    out = None
    for i, rate in enumerate((6, 12, 18, 24)[:branches]):
        y = F.conv2d(x4, sd[f"layer6.conv2d_list.{i}.weight"], sd[f"layer6.conv2d_list.{i}.bias"], padding=rate,
                     dilation=rate)
        out = y if out is None else out + y
    return out


def ref_rcu(sd: dict, p: str, x: torch.Tensor, blocks: int) -> torch.Tensor:
    for i in range(1, blocks + 1):  # RCUBlock: per stage relu then conv; `x += residual` per block
        residual = x
        x = F.conv2d(F.relu(x), sd[f"{p}.0.{i}_conv.weight"], sd[f"{p}.0.{i}_conv.bias"], padding=1)
        x = F.conv2d(F.relu(x), sd[f"{p}.0.{i}_conv_relu_varout_dimred.weight"], padding=1)
        x = x + residual
    return x


def ref_crp(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    top = x
    for i in range(1, 5):  # CRPBlock: top = conv(maxpool5(top)); x = top + x
        top = F.conv2d(F.max_pool2d(top, 5, 1, 2), sd[f"{p}.0.{i}_outvar_dimred.weight"], padding=1)
        x = top + x
    return x


def ref_refinenet(sd: dict, x: torch.Tensor, layers) -> torch.Tensor:
    """refinenet.forward in eval mode (its dropouts are the identity)."""
    l1, l2, l3, l4 = ref_encoder(sd, x, layers, deeplab=False)

    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"], padding=1)

    def up(t, like):
        return F.interpolate(t, size=like.shape[-2:], mode="bilinear", align_corners=True)

    x4 = ref_rcu(sd, "adapt_stage1_b", conv("p_ims1d2_outl1_dimred", l4), 2)
    x4 = ref_rcu(sd, "mflow_conv_g1_b", ref_crp(sd, "mflow_conv_g1_pool", F.relu(x4)), 3)
    above = up(conv("mflow_conv_g1_b3_joint_varout_dimred", x4), l3)
    for k, feature, nxt in ((2, l3, l2), (3, l2, l1), (4, l1, None)):
        y = conv(f"adapt_stage{k}_b2_joint_varout_dimred", ref_rcu(sd, f"adapt_stage{k}_b",
                                                               conv(f"p_ims1d2_outl{k}_dimred", feature), 2))
        y = ref_rcu(sd, f"mflow_conv_g{k}_b", ref_crp(sd, f"mflow_conv_g{k}_pool", F.relu(y + above)), 3)
        if nxt is not None:
            above = up(conv(f"mflow_conv_g{k}_b3_joint_varout_dimred", y), nxt)
    return F.conv2d(y, sd["clf_conv.weight"], sd["clf_conv.bias"], padding=1)


def ref_light(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """relighting.py's LightNet (ResnetGenerator, 3 blocks): r in [-1, 1]."""
    y = F.relu(norm(F.conv2d(F.pad(x, (3,) * 4, mode="reflect"), sd["model.1.weight"]), sd, "model.2"))
    y = F.relu(norm(F.conv2d(y, sd["model.4.weight"], stride=2, padding=1), sd, "model.5"))
    y = F.relu(norm(F.conv2d(y, sd["model.7.weight"], stride=2, padding=1), sd, "model.8"))
    for i in (10, 11, 12):
        p = f"model.{i}.conv_block"
        r = F.relu(norm(F.conv2d(F.pad(y, (1,) * 4, mode="reflect"), sd[f"{p}.1.weight"]), sd, f"{p}.2"))
        y = y + norm(F.conv2d(F.pad(r, (1,) * 4, mode="reflect"), sd[f"{p}.5.weight"]), sd, f"{p}.6")
    for conv, bnorm in ((13, 14), (16, 17)):
        y = F.relu(norm(F.conv_transpose2d(y, sd[f"model.{conv}.weight"], stride=2, padding=1, output_padding=1),
                        sd, f"model.{bnorm}"))
    return torch.tanh(F.conv2d(F.pad(y, (3,) * 4, mode="reflect"), sd["model.20.weight"], sd["model.20.bias"]))


def ref_evaluate(net_sd: dict, light_sd: dict | None, image: torch.Tensor, network) -> torch.Tensor:
    """evaluate.py: ImageNet-normalised RGB, + LightNet's r, network, * class weights (std 0.16), upsampled
    with align_corners=True to the image size."""
    x = (image - MEAN) / STD
    if light_sd is not None:
        x = x + ref_light(light_sd, x)
    logits = network(net_sd, x)
    if light_sd is not None:
        logits = logits * class_prior_weights(0.16).view(1, -1, 1, 1)
    return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)


NETWORKS = {
    "deeplab": (deeplab_sd, lambda sd, x: ref_deeplab(sd, x, TINY["layers"]), "nightseg.models.dannet_deeplab:dannet_deeplab"),
    "refinenet": (refinenet_sd, lambda sd, x: ref_refinenet(sd, x, TINY["layers"]),
                  "nightseg.models.dannet_refinenet:dannet_refinenet"),
}


@pytest.fixture(scope="module")
def light_state() -> dict:
    return lightnet_sd()


@pytest.mark.parametrize("network", ["deeplab", "refinenet"])
@pytest.mark.parametrize("with_light", [True, False], ids=["adapted", "alone"])
def test_imported_network_computes_dannet_evaluate(network, with_light, light_state, run_cli, tmp_path):
    make, reference, factory = NETWORKS[network]
    sd = make(**TINY)
    torch.save(sd, tmp_path / f"dannet_{network}.pth")
    if with_light:
        torch.save(light_state, tmp_path / f"dannet_{network}_light.pth")
    out = tmp_path / "imported.safetensors"
    result = run_cli("import", tmp_path / f"dannet_{network}.pth", "--out", out)
    assert result.code == 0, result.err
    _, meta = load_checkpoint(out)
    expected = {"name": factory, "num_classes": 19, "light": with_light, "align_corners": True,
                "width": 8, "layers": [1, 1, 2, 1]}
    if with_light:
        expected["class_prior_std"] = 0.16
    assert meta["model"] == expected
    info = meta["pretrained"]
    assert info["consumed"] == len(sd) + (len(light_state) if with_light else 0)
    assert info["classes"][0] == "road" and info["preprocessing"]["channels"] == "rgb"
    net, _ = load_inference_net(out)  # as predict / evaluate rebuild it
    image = torch.rand(1, 3, 36, 44, generator=GEN)
    with torch.no_grad():
        ours = net(image)
        ref = ref_evaluate(sd, light_state if with_light else None, image, reference)
    assert ours.shape == (1, 19, 36, 44)
    assert (ours - ref).abs().max() < 1e-5 * max(1.0, float(ref.abs().max()))


def test_deeplab_classifier_adds_only_its_first_two_branches_as_dannet_does(tmp_path):
    sd = deeplab_sd(**TINY)
    torch.save(sd, tmp_path / "deeplab.pth")
    converted = import_checkpoint(tmp_path / "deeplab.pth")
    stacked = converted.tensors["head.classifier.weight"]
    assert stacked.shape == (19, 4, 256, 3, 3)  # the four convs, class dimension first
    assert torch.equal(stacked[:, 3], sd["layer6.conv2d_list.3.weight"])
    assert converted.pretrained["consumed"] == len(sd)  # layer5 (auxiliary) consumed by dropping it
    from nightseg.models.dannet_deeplab import dannet_deeplab

    x = torch.randn(1, 3, 20, 28, generator=GEN)
    for branches in (2, 4):
        model = dannet_deeplab(aspp_branches=branches, **TINY).eval()
        model.load_state_dict(converted.tensors)
        with torch.no_grad():
            ours = model.head(model.backbone(x))
            ref = ref_deeplab(sd, x, TINY["layers"], branches)
        assert (ours - ref).abs().max() < 1e-5 * max(1.0, float(ref.abs().max()))
        if branches == 2:  # branches 3 and 4 have no effect on DANNet's function
            model.head.classifier.weight.data[:, 2:] = 5.0
            with torch.no_grad():
                assert torch.equal(model.head(model.backbone(x)), ours)
    with pytest.raises(UserError, match="aspp_branches=5"):
        dannet_deeplab(aspp_branches=5, **TINY)


def test_class_map_reorders_every_deeplab_branch(tmp_path):
    sd = deeplab_sd(**TINY)
    torch.save(sd, tmp_path / "deeplab.pth")
    order = [18, *range(18)]
    converted = import_checkpoint(tmp_path / "deeplab.pth", class_map=order)
    for b in range(4):
        assert torch.equal(converted.tensors["head.classifier.weight"][:, b], sd[f"layer6.conv2d_list.{b}.weight"][order])
        assert torch.equal(converted.tensors["head.classifier.bias"][:, b], sd[f"layer6.conv2d_list.{b}.bias"][order])


@pytest.mark.parametrize("network", ["deeplab", "refinenet"])
def test_full_size_release_layout_maps_every_tensor_once(network, tmp_path):
    # DANNet's ResNet-101 sizes on the meta device: every key and shape, no memory, no time
    make, _, factory = NETWORKS[network]
    sd = make(t=meta, b=meta_bn)
    converted, _ = dannet_format.convert(sd, str(tmp_path / f"dannet_{network}.pth"))
    assert converted.pretrained["consumed"] == len(sd)
    assert converted.model == {"name": factory, "num_classes": 19, "light": False, "align_corners": True}
    config = dict(converted.model)
    with torch.device("meta"):
        model = import_factory(config.pop("name"), "model")(**config)
    own = model.state_dict()
    assert sorted(own) == sorted(converted.tensors)
    assert all(own[k].shape == converted.tensors[k].shape for k in own)
    dropped = 8 if network == "deeplab" else 0  # layer5's 4 convs (weight + bias)
    stacked = 8 - 2 if network == "deeplab" else 0  # layer6's 8 tensors become 2
    assert len(converted.tensors) == len(sd) - dropped - stacked


def test_release_folder_pairs_each_network_with_its_light_net(tmp_path, light_state, run_cli):
    folder = tmp_path / "trained_models"
    folder.mkdir()
    torch.save(refinenet_sd(**TINY), folder / "dannet_refinenet.pth")
    torch.save(light_state, folder / "dannet_refinenet_light.pth")
    converted = import_checkpoint(folder)
    assert converted.model["name"].endswith("dannet_refinenet") and converted.model["light"] is True
    assert converted.pretrained["files"] == ["dannet_refinenet.pth", "dannet_refinenet_light.pth"]
    # the whole release folder (several networks): one line that says which file to import
    torch.save(deeplab_sd(**TINY), folder / "dannet_deeplab.pth")
    result = run_cli("import", folder, "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "holds 2 DANNet networks" in result.err and "dannet_deeplab_light.pth comes along" in result.err
    # a file named NAME_light.pth that is not a LightNet is named, not silently ignored
    torch.save({"conv1.weight": rand(8, 3, 7, 7)}, folder / "dannet_deeplab_light.pth")
    result = run_cli("import", folder / "dannet_deeplab.pth", "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and "not DANNet's LightNet" in result.err and result.err.count("\n") == 1


def test_deeplab_and_refinenet_are_no_longer_refused(tmp_path, run_cli, light_state):
    # the message of the old refusal ("DeepLab-v2 is not supported yet") is gone; an incomplete file is a
    # one-line error naming what is missing
    deeplab = {"conv1.weight": rand(64, 3, 7, 7), "layer4.0.conv1.weight": rand(2, 2),
               "layer5.conv2d_list.0.weight": rand(19, 2048, 3, 3)}
    torch.save(deeplab, tmp_path / "dannet_deeplab.pth")
    result = run_cli("import", tmp_path / "dannet_deeplab.pth", "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and "not supported" not in result.err and result.err.count("\n") == 1
    assert "not a complete DANNet DeepLab-v2 checkpoint: no layer1 blocks" in result.err
    refinenet = refinenet_sd(**TINY)
    del refinenet["mflow_conv_g2_pool.0.3_outvar_dimred.weight"]
    torch.save(refinenet, tmp_path / "dannet_refinenet.pth")
    result = run_cli("import", tmp_path / "dannet_refinenet.pth", "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and "not supported" not in result.err and result.err.count("\n") == 1
    assert "head.blocks.1.pool.convs.2.weight" in result.err  # what the NightSeg network misses
    torch.save(light_state, tmp_path / "light.pth")
    result = run_cli("import", tmp_path / "light.pth", "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and "LightNet alone" in result.err

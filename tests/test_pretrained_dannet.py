"""DANNet's released networks: random weights in its state-dict layout (written here from its network code's
module structure: network/pspnet.py, network/relighting.py) convert with every tensor consumed once and
every shape matching; the parts that differ from NightSeg's PSPNet compute what DANNet's code computes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nightseg.core.checkpoint import load_checkpoint
from nightseg.inference import load_inference_net
from nightseg.models.dannet import class_prior_weights
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
    folder, psp, _ = release
    converted = import_checkpoint(folder / "dannet_psp.pth")
    assert converted.model == {"name": "nightseg.models.dannet:dannet_pspnet", "num_classes": 19, "light": False,
                               "align_corners": True}
    assert converted.pretrained["consumed"] == len(psp)


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


def test_unsupported_dannet_networks_are_one_line_errors(tmp_path, run_cli):
    deeplab = {"conv1.weight": rand(64, 3, 7, 7), "layer4.0.conv1.weight": rand(2, 2),
               "layer5.conv2d_list.0.weight": rand(19, 2048, 3, 3)}
    torch.save(deeplab, tmp_path / "dannet_deeplab.pth")
    result = run_cli("import", tmp_path / "dannet_deeplab.pth", "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and "DeepLab-v2 is not supported yet" in result.err and result.err.count("\n") == 1
    torch.save(lightnet_sd(), tmp_path / "light.pth")
    result = run_cli("import", tmp_path / "light.pth", "--out", tmp_path / "o.safetensors")
    assert result.code == 2 and "LightNet alone" in result.err

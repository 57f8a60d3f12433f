"""ONNX export: parity with PyTorch (<= 1e-4) at several sizes, the onnxruntime backend, `nightseg export`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from nightseg.inference import InferenceNet, OnnxNet, Predictor, load_inference_net
from nightseg.inference.onnx import (
    PARITY_TOLERANCE,
    ExportableAdaptiveAvgPool2d,
    export_onnx,
    make_exportable,
)
from nightseg.models import DCENet, build_segmenter


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def onnx_file(ckpt: Path) -> tuple[Path, dict]:
    net, _ = load_inference_net(ckpt)
    info = export_onnx(net, ckpt.with_suffix(".onnx"), size=(40, 64))
    return ckpt.with_suffix(".onnx"), info


@pytest.mark.parametrize("k", [2, 3, 6])
def test_exportable_pooling_equals_adaptive_avg_pool(k):
    x = torch.randn(2, 3, 13, 22) * 10
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d(k)(x), nn.functional.adaptive_avg_pool2d(x, k),
                               atol=1e-5, rtol=0)
    swapped = make_exportable(nn.Sequential(nn.AdaptiveAvgPool2d(k), nn.AdaptiveAvgPool2d(1)))
    assert isinstance(swapped[0], ExportableAdaptiveAvgPool2d) and isinstance(swapped[1], nn.AdaptiveAvgPool2d)


def test_onnx_parity_at_other_sizes_and_batches(ckpt, onnx_file):
    path, info = onnx_file
    assert info["dynamic"] and info["opset"] >= 17
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= PARITY_TOLERANCE
    net, _ = load_inference_net(ckpt)
    net = net.to(memory_format=torch.channels_last)  # same function; much faster dilated convs on CPU
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 40, 64), (3, 3, 28, 56)]:  # the traced size, and another size and batch
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = net(x.contiguous(memory_format=torch.channels_last)).contiguous().numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape
        assert float(np.abs(got - expected).max()) <= PARITY_TOLERANCE


def test_relighting_is_part_of_the_export(tmp_path):
    torch.manual_seed(1)
    net = InferenceNet(build_segmenter("pspnet_tiny").eval(), DCENet(generator=torch.Generator().manual_seed(2)).eval(),
                       curve_scale=0.5)
    info = export_onnx(net, tmp_path / "relit.onnx", size=(40, 64))
    assert info["max_abs_diff"] <= PARITY_TOLERANCE
    runner = OnnxNet(tmp_path / "relit.onnx")
    assert runner.meta["relight"] is True and runner.num_classes == 19
    x = torch.rand(1, 3, 40, 64)
    net = net.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = net(x.contiguous(memory_format=torch.channels_last)).contiguous()
    torch.testing.assert_close(runner(x), expected, atol=PARITY_TOLERANCE, rtol=0)


def test_onnx_backend_predicts_like_torch(ckpt, onnx_file):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 64, 3), dtype=np.uint8) for _ in range(2)]
    torch_seg = Predictor.from_checkpoint(ckpt)
    expected = torch_seg.predict_batch(images, return_probs=True)
    for onnx_seg in (Predictor.from_checkpoint(onnx_file[0]), Predictor.from_checkpoint(ckpt, backend="onnx")):
        assert onnx_seg.backend == "onnx"
        for a, b in zip(expected, onnx_seg.predict_batch(images, return_probs=True)):
            torch.testing.assert_close(a.probs, b.probs, atol=1e-4, rtol=0)
            assert (a.labels != b.labels).mean() < 1e-3  # only exact ties could flip


def test_export_cli(ckpt, tmp_path, run_cli):
    out = tmp_path / "cli.onnx"
    result = run_cli("export", ckpt, "--format", "onnx", "--out", out, "--size", "40x64")
    assert result.code == 0, result.err
    assert out.is_file() and "dynamic height/width" in result.out and "max |onnx - torch|" in result.out
    diff = float(result.out.rsplit("= ", 1)[1].strip().rstrip(")"))
    assert diff <= PARITY_TOLERANCE
    bad = run_cli("export", tmp_path / "nope.safetensors")
    assert bad.code == 2 and "nope.safetensors" in bad.err
    wrong = run_cli("export", ckpt, "--out", tmp_path / "x.pt")
    assert wrong.code == 2 and "x.pt" in wrong.err

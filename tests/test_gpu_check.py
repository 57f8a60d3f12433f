"""bench/gpu_check.py (issue 23): its CPU dry run (``--device cpu --tiny``) goes through every code path of
the GPU check, so that the script cannot rot between GPU runs; and bench/gpu_memory_estimate.py's byte
accounting on a model whose sizes are known."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from nightseg.core.config import load_config
from nightseg.pipelines.recipes import CONFIG_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BENCH = Path(__file__).parents[1] / "bench"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_summary_leaves_out_the_warm_up_and_counts_images():
    """Step times are the intervals between step ends; the first quarter (cuDNN autotuning, workers
    starting) is left out of the median; images/s is images per step over that median."""
    check = _bench("gpu_check")
    row = check.summarise("r", [0.0, 10.0, 11.0, 13.0, 14.0], [2.0, 1.5, 1.5, 1.0], 6, {})
    assert row["s_per_step"] == pytest.approx(1.0)  # intervals 10 | 1, 2, 1 -> median 1
    assert row["images_per_s"] == pytest.approx(6.0)
    assert row["finite"] and row["moving"] and row["steps"] == 4
    stuck = check.summarise("r", [0.0, 1.0, 2.0], [0.5, 0.5], 2, {})
    assert stuck["finite"] and not stuck["moving"]
    broken = check.summarise("r", [0.0, 1.0, 2.0], [0.5, float("nan")], 2, {})
    assert not broken["finite"] and not broken["moving"]
    batch = {"source": {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4)},
             "target": {"night": torch.zeros(2, 3, 4, 4), "day": torch.zeros(2, 3, 4, 4), "name": ["a", "b"]}}
    assert check.batch_images(batch) == 6


@pytest.mark.slow
def test_cpu_dry_run_trains_every_recipe_and_predicts(tmp_path, capsys):
    """`gpu_check.py --device cpu --tiny` trains every top-level recipe (and NightLab's RDN/HDM stages and
    the CycleGAN) for 3 steps and times prediction: every row is there, ok, with finite losses that move,
    3 steps counted, the images of the recipe's batch, positive throughput; the JSON matches the table.
    A recipe added to configs/ is a new row, so this test fails until the check can run it."""
    check = _bench("gpu_check")
    out = tmp_path / "check.json"
    assert check.main(["--device", "cpu", "--tiny", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["train"]}
    recipes = {p.stem: load_config(p) for p in CONFIG_DIR.glob("*.yaml")}
    stages = {"nightlab RDN", "nightlab HDM labels", "nightlab HDM", "translation (CycleGAN)"}
    assert set(recipes) | stages == set(rows)
    # images per step: data.batch_size per stream, two per Dark Zurich pair (night and day)
    images = {name: cfg.data.batch_size * sum(2 if s.dataset == "dark_zurich_pairs" else 1
                                              for s in (cfg.data.source, cfg.data.target) if s.dataset)
              for name, cfg in recipes.items()}
    assert images["ulca"] == 6 and images["supervised_joint"] == 4 and images["egnet_joint"] == 14
    images |= {"translation (CycleGAN)": 2, "nightlab HDM labels": 1}
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r["status"])
        assert r["s_per_step"] > 0 and r["images_per_s"] > 0
        expected = images.get(name, r["batch"])
        assert r["images_per_step"] == expected, (name, r["images_per_step"], expected)
        assert r["images_per_s"] == pytest.approx(expected / r["s_per_step"])
        assert f"| {name} |" in printed
        if name != "nightlab HDM labels":  # a labelling pass, no loss: one "step" per image
            assert r["steps"] == 3 and r["finite"] and r["moving"], (name, r)
    for name, cfg in recipes.items():  # the engine trained all the steps at the config's own batch
        assert rows[name]["finished"] and rows[name]["precision"] == "32-true"
        assert rows[name]["batch"] == cfg.data.batch_size
    assert rows["ulca"]["crops"] == [[32, 32], [48, 48]] and rows["egnet"]["batch"] == 14
    predict = {r["row"]: r for r in result["predict"]}
    for name in ("torch fp32", "torch bf16 autocast"):
        assert predict[name]["status"] == "ok" and predict[name]["size"] == [64, 128]
        assert math.isfinite(predict[name]["s_per_image"]) and predict[name]["images_per_s"] > 0
    assert predict["torch bf16 autocast + torch.compile"]["status"].startswith("skipped")
    onnx = predict["onnxruntime"]
    if importlib.util.find_spec("onnxruntime") is not None:
        assert onnx["status"] == "ok" and onnx["providers"] == ["CPUExecutionProvider"]
    assert result["device"] == "cpu" and result["tiny"] and result["steps"] == 3


def test_memory_estimate_counts_saved_tensors_once_and_not_parameters():
    """The activation count of bench/gpu_memory_estimate.py on a net whose saved tensors are known: a
    Linear saves its input (8x100 fp32 = 3200 bytes; its weight is a parameter, not counted) and ReLU its
    output (8x50 = 1600); a tensor saved by two ops is counted once; nothing is kept (placeholders)."""
    est = _bench("gpu_memory_estimate")
    net = torch.nn.Sequential(torch.nn.Linear(100, 50), torch.nn.ReLU())
    exclude = {p.untyped_storage().data_ptr() for p in net.parameters()}
    x = torch.rand(8, 100)
    counter = est.activations(lambda: net(x).sum(), exclude, False)
    assert counter.total == 3200 + 1600 and counter.largest == 3200 and counter.count == 2
    w = torch.rand(8, 100, requires_grad=True)
    twice = est.activations(lambda: (x * w + x * w.exp()).sum(), set(), False)
    # x (saved by both products, which need it for w's gradient) once, and exp(w) (saved by exp); w itself
    # is not saved (x needs no gradient)
    assert twice.total == 2 * 3200 and twice.count == 2
    half = est.activations(lambda: net(x).sum(), exclude, True)  # bf16 autocast: input and output in bf16
    assert half.total == 1600 + 800
    # an input that needs a gradient makes the Linear save its bf16 weight copy (autocast's cast, not the
    # fp32 parameter): 2 bytes x 5000 more
    grad_in = est.activations(lambda: net(x.clone().requires_grad_()).sum(), exclude, True)
    assert grad_in.total == 1600 + 800 + 2 * 5000
    assert est.tensor_bytes(net.parameters()) == (100 * 50 + 50) * 4


def test_memory_estimate_counts_what_cuda_autocast_keeps_in_fp32():
    """CUDA autocast runs layer norm and softmax in fp32 (CPU autocast: bf16), so the estimate counts them at
    4 bytes: Linear's bf16 input 8x100x2 = 1600, LayerNorm's fp32 input 8x50x4 = 1600 and its fp32 mean and
    rstd 2x8x4 = 64, Softmax's fp32 output 1600. Plain CPU autocast would count 1600 + 800 + 64 + 800."""
    est = _bench("gpu_memory_estimate")
    net = torch.nn.Sequential(torch.nn.Linear(100, 50), torch.nn.LayerNorm(50), torch.nn.Softmax(-1))
    exclude = {p.untyped_storage().data_ptr() for p in net.parameters()}
    x = torch.rand(8, 100)
    counter = est.activations(lambda: net(x).sum(), exclude, True)
    assert counter.total == 1600 + 1600 + 64 + 1600 and counter.count == 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x).dtype == torch.bfloat16  # CPU autocast alone: what the estimate corrects
    with torch.autocast("cpu", dtype=torch.bfloat16), est.CudaAutocastFp32():
        assert net(x).dtype == torch.float32


def test_memory_cap_without_a_gpu_is_refused_in_one_line(capsys):
    assert _bench("gpu_check").main(["--device", "cpu", "--tiny", "--memory-cap-gib", "22.4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--memory-cap-gib" in err[0] and "GPU" in err[0]

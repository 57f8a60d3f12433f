"""`nightseg evaluate` reports the inference settings that actually ran: an imported checkpoint whose
metadata asks for a sliding window (``pretrained.preprocessing.test``) is scored, and reported, with it."""

from __future__ import annotations

import json

import pytest
import torch

from nightseg.core.checkpoint import save_checkpoint
from nightseg.data import build_dataset
from nightseg.inference import Predictor, SlidingWindow
from nightseg.models import build_segmenter
from nightseg.pipelines.evaluate import evaluate_dataset, inference_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SLIDE = {"mode": "slide", "window": [32, 48], "stride": [16, 24], "blend": "uniform"}


@pytest.fixture(scope="module")
def dark_zurich(synthetic_set):
    counts = {"train": 0, "val": 0, "pairs": 0, "night_val": 1, "night_train": 0, "nightcity_val": 0}
    return synthetic_set(counts) / "dark_zurich"  # 64x128 images


def test_reported_sliding_window_is_the_checkpoints(tmp_path, dark_zurich, run_cli):
    torch.manual_seed(0)
    net = build_segmenter("pspnet_tiny").eval()
    ckpt = save_checkpoint(tmp_path / "sliding.safetensors", net.state_dict(),
                           {"model": net.config, "pretrained": {"preprocessing": {"test": SLIDE}}})

    out = tmp_path / "report"
    r = run_cli("evaluate", ckpt, "--dataset", "dark_zurich", "--root", dark_zurich, "--out", out, "--device", "cpu")
    assert r.code == 0, r.err
    results = json.loads((out / "report.json").read_text())
    assert results["settings"]["sliding"] == {"window": [32, 48], "stride": [16, 24], "blend": "uniform"}
    assert results["settings"]["tta"] == "none" and results["settings"]["backend"] == "torch"
    assert "sliding={'window': [32, 48]" in (out / "report.md").read_text()
    # the same window given by hand scores the same numbers: the metadata's window is what ran
    dataset = build_dataset("dark_zurich", dark_zurich, "val")
    by_hand = Predictor.from_checkpoint(ckpt, sliding=SlidingWindow((32, 48), (16, 24), "uniform"))
    scores = evaluate_dataset(by_hand, dataset, progress=False, workers=0)
    assert scores["confusion_matrix"] == results["confusion_matrix"]
    assert inference_settings(by_hand)["sliding"] == results["settings"]["sliding"]
    whole = Predictor.from_checkpoint(ckpt, sliding=False, tta="flip,0.75,1")  # --whole --tta flip,0.75,1
    assert inference_settings(whole) == {"backend": "torch", "sliding": False, "tta": "flip,0.75,1"}

"""`nightseg demo` end to end on a tiny plan: stages, report, picture grid and resumption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nightseg.core.io import read_image
from nightseg.pipelines import demo, recipes


@pytest.mark.slow
def test_demo_tiny_plan_writes_report_and_resumes(tmp_path, monkeypatch, run_cli):
    tiny = demo.DemoPlan(
        counts={"train": 4, "val": 2, "pairs": 4, "night_val": 3, "night_train": 4, "nightcity_val": 2},
        size=(64, 128), relight_epochs=1, steps={"source_only": 3, "ulca": 2, "oracle": 3}, eval_limit=None,
    )
    monkeypatch.setitem(demo.PLANS, "quick", tiny)
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--out", out)
    assert result.code == 0, result.err
    saved = json.loads((out / "results.json").read_text())
    assert saved["plan"] == "quick" and set(saved["results"]) == {"source_only", "ulca", "oracle"}
    for scores in saved["results"].values():
        assert 0.0 <= scores["night"]["mIoU"] <= 1.0 and 0.0 <= scores["day"]["mIoU"] <= 1.0
        assert scores["night"]["num_images"] == 3 and scores["day"]["num_images"] == 2
        assert 0.0 <= scores["night"]["exposure"]["mEF1"] <= 1.0
    report = (out / "report.md").read_text()
    for title in ("Source-only (day labels)", "ULCA", "Oracle (night labels)"):
        assert f"| {title} |" in report
    assert "| traffic light |" in report
    grid = read_image(out / "predictions.png")
    # 3 night val rows of 64+4 px; 6 columns (night, relit, 3 models, ground truth) of 128+4 px
    assert grid.shape == (3 * 68, 6 * 132, 3)
    # the ULCA run started from the source-only weights and carries the relighting net
    ulca_meta = json.loads((out / "runs" / "ulca" / "checkpoints" / "last.json").read_text())
    assert ulca_meta["step"] == 2
    # the oracle trained in the background process equals the same run trained alone, in this process
    assert "trained cpu_supervised_nightcity for 3 steps" in (out / "runs" / "oracle.log").read_text()
    alone = recipes.train_recipe("cpu/supervised_nightcity.yaml", out / "data", tmp_path / "oracle_alone", 3, 0,
                              ["train.cpu_threads=1"])
    background = load_file(out / "runs" / "oracle" / "checkpoints" / "last.safetensors")
    expected = load_file(alone)
    assert background.keys() == expected.keys()
    assert all(torch.equal(background[k], expected[k]) for k in expected)
    # rerunning finds every stage finished and reproduces the same scores
    again = run_cli("demo", "--quick", "--out", out)
    assert again.code == 0
    assert json.loads((out / "results.json").read_text())["results"] == saved["results"]
    assert np.array_equal(read_image(out / "predictions.png"), grid)

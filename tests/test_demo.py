"""`nightseg demo` end to end on a tiny plan: stages, report, picture grid and resumption."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nightseg.core.io import read_image, read_label
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
    # the pictures: titled columns (the caption names them), a legend, per-class bars and the exposure curve
    assert "Columns of the picture: night input | Zero-DCE relit | Source-only (day labels) | ULCA | " \
           "Oracle (night labels) | ground truth | ULCA vs source-only" in report and "Rows" not in report
    grid = read_image(out / "predictions.png")
    assert grid.shape[1] > grid.shape[0] > 0 and grid.std() > 0
    for name in ("class_iou.png", "exposure.png"):
        assert read_image(out / name).std() > 0 and f"]({name})" in report
    # the example scenes follow the stated rule: recompute every scene's ULCA gain independently
    from nightseg.inference import Predictor
    from nightseg.pipelines.demo_report import night_val_scenes, pixel_accuracy

    checkpoints = {k: out / "runs" / k / "checkpoints" / "last.safetensors" for k in ("source_only", "ulca")}
    models = {k: Predictor.from_checkpoint(p) for k, p in checkpoints.items()}
    gains = {}
    for image_path, label_path in night_val_scenes(out / "data"):
        image, label = read_image(image_path), read_label(label_path)
        acc = {k: pixel_accuracy(m.predict(image).labels, label) for k, m in models.items()}
        gains[image_path.name.replace("_rgb_anon.png", "")] = acc["ulca"] - acc["source_only"]
    ranked = sorted(gains, key=lambda n: (-gains[n], n))
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith(("| largest", "| median", "| smallest"))]
    chosen = {row[0].removeprefix("| "): row[1] for row in rows}
    assert chosen["largest gain"] == ranked[0] and chosen["smallest gain"] == ranked[-1]
    assert chosen.get("median gain", ranked[1]) == ranked[1]  # 3 scenes: the median is the middle one
    assert f"{100 * gains[ranked[0]]:+.1f}" in report
    # the demo ends with the real checkpoint paths and the next commands to try with them
    ulca_ckpt = out / "runs" / "ulca" / "checkpoints" / "last.safetensors"
    for path in (out / "runs" / k / "checkpoints" / "last.safetensors" for k in ("source_only", "ulca", "oracle")):
        assert f": {path}" in result.out and path.is_file()
    assert f"nightseg predict {ulca_ckpt} " in result.out and f"nightseg serve {ulca_ckpt}" in result.out
    assert f"nightseg evaluate {ulca_ckpt} --dataset dark_zurich --root {out / 'data' / 'dark_zurich'}" in result.out
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
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("nightseg")  # attached directly: the root logger's setup by other tests does not matter
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    try:
        again = run_cli("demo", "--quick", "--out", out)
    finally:
        logger.removeHandler(handler)
    assert again.code == 0
    # ... and says so: no "resuming" for a finished stage
    said = "\n".join(messages)
    assert "resuming" not in said + again.err
    assert "zero_dce.safetensors: already trained (1 epoch(s))" in said and "already complete" in said
    assert "ulca: already trained" in said
    assert json.loads((out / "results.json").read_text())["results"] == saved["results"]
    assert np.array_equal(read_image(out / "predictions.png"), grid)

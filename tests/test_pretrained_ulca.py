"""ULCA fine-tuned from an imported checkpoint (the seed's start: a published Cityscapes model): a random
Hugging Face SegFormer-B0 saved in transformers' format is imported, `method.init_checkpoint` loads it
exactly, and a few ULCA steps on the tiny data of tests/test_ulca.py train it."""

from __future__ import annotations

import math

import pytest
import torch

from nightseg.methods.ulca import ULCA
from nightseg.models import DCENet
from nightseg.models.relight import save_dce_weights
from nightseg.pipelines.pretrained import import_model
from test_ulca import make_batch, make_cfg, run_step

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra (pip install -e '.[test]')")
transformers.utils.logging.disable_progress_bar()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ulca_fine_tunes_from_an_imported_checkpoint(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    SegformerForSemanticSegmentation(SegformerConfig(num_labels=19)).save_pretrained(tmp_path / "hf")
    ckpt, meta = import_model(tmp_path / "hf", tmp_path / "start.safetensors")
    relight = save_dce_weights(DCENet(generator=torch.Generator().manual_seed(0)), tmp_path / "dce.safetensors")
    cfg = make_cfg(tmp_path, relight, {"init_checkpoint": str(ckpt)},
                   model={"name": meta["model"]["name"], "pretrained": False,
                          "options": {k: meta["model"][k] for k in ("layer_norm_eps", "sdpa")}})
    module = ULCA(cfg)
    start = {k: v.clone() for k, v in module.model.segmenter.state_dict().items()}
    from nightseg.core.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(ckpt)
    assert all(torch.equal(start[k], v) for k, v in tensors.items())  # the imported weights, exactly
    # method.init_checkpoint also takes the published folder (or hf:ORG/NAME) itself, converted on the fly
    direct = ULCA(make_cfg(tmp_path, relight, {"init_checkpoint": str(tmp_path / "hf")}, model=cfg.model.__dict__))
    assert all(torch.equal(direct.model.segmenter.state_dict()[k], v) for k, v in tensors.items())
    module.train()
    optimizer = torch.optim.SGD([p for g in module.param_groups() for p in g["params"]], lr=0.01)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        total, logged, _ = run_step(module, make_batch())
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
        assert all(math.isfinite(logged[f"train/{t}"]) for t in ("seg", "static", "mix", "kl"))
    after = module.model.segmenter.state_dict()
    moved = [k for k in tensors if k.endswith("weight") and not torch.equal(after[k], start[k])]
    assert "head.classifier.weight" in moved and "backbone.encoder.patch_embed1.proj.weight" in moved
    assert losses[-1] < losses[0]  # three steps on the same batch lower its loss

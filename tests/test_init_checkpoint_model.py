"""``method.init_checkpoint`` of a model whose architecture is not the recipe's: the recipe trains the
architecture (and input normalisation / builder options) the checkpoint was saved for, with one INFO line,
unless the user set another ``model.name`` on the command line (one-line error naming both)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import yaml

from nightseg.core.checkpoint import load_checkpoint, save_checkpoint
from nightseg.core.config import load_config
from nightseg.core.errors import UserError
from nightseg.engine import build_module
from nightseg.models import build_segmenter
from nightseg.models.pretrained import import_checkpoint
from test_engine import TinyDataset, tiny_recipe, write_recipe

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra (pip install -e '.[test]')")
transformers.utils.logging.disable_progress_bar()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAFFE_BGR = {"mean": [0.4082, 0.4579, 0.4812], "std": [1 / 255.0] * 3, "channels": "bgr"}  # DANNet's input


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random Hugging Face SegFormer-B0 (19 classes) saved in transformers' format."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "segformer-b0"
    SegformerForSemanticSegmentation(SegformerConfig(num_labels=19)).save_pretrained(folder)
    return folder


def recipe(tmp_path, **model):
    """The engine tests' tiny supervised recipe with the model section of configs/ulca.yaml (or `model`)."""
    raw = tiny_recipe(max_steps=1, val_every=0)
    raw["model"] = model or {"name": "pspnet_r101", "pretrained": True}
    return write_recipe(tmp_path, raw)


def one_step(module) -> float:
    """The first training step's loss on two tiny samples (outside a Trainer)."""
    data = TinyDataset(".", "train")
    batch = {"source": {k: torch.stack([data[i][k] for i in range(2)]) for k in ("image", "label")}}
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.train()
    return float(module.training_step(batch, 0).detach())


def test_imported_segformer_is_trained_without_restating_its_architecture(tmp_path, hf_folder, caplog):
    cfg = load_config(recipe(tmp_path), [f"method.init_checkpoint={hf_folder}"])
    with caplog.at_level(logging.INFO, logger="nightseg.train"):
        module = build_module(cfg)
    lines = [r.getMessage() for r in caplog.records if "method.init_checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "model.name pspnet_r101 -> segformer_b0" in lines[0]
    assert "model.pretrained false" in lines[0] and "layer_norm_eps=1e-05" in lines[0]
    assert module.model.config == {"name": "segformer_b0", "num_classes": 19, "layer_norm_eps": 1e-5, "sdpa": True}
    assert cfg.model.name == "segformer_b0" and cfg.model.pretrained is False  # what config.yaml will record
    tensors = import_checkpoint(hf_folder).tensors
    state = module.model.state_dict()
    assert sorted(state) == sorted(tensors) and all(torch.equal(state[k], v) for k, v in tensors.items())
    eps = {m.eps for m in module.model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-5}  # transformers' LayerNorm eps, from the checkpoint's model options
    assert math.isfinite(one_step(module))


def test_checkpoint_normalisation_is_adopted_for_the_same_architecture(tmp_path, caplog):
    """A pspnet_tiny saved with DANNet-style BGR Caffe input normalisation: the recipe's pspnet_tiny (ImageNet
    normalisation) takes it over, so the weights see the input they were trained on."""
    torch.manual_seed(1)
    net = build_segmenter("pspnet_tiny", input_norm=CAFFE_BGR)
    path = save_checkpoint(tmp_path / "bgr.safetensors", net.state_dict(), {"model": net.config})
    cfg = load_config(recipe(tmp_path, name="pspnet_tiny"), [f"method.init_checkpoint={path}"])
    with caplog.at_level(logging.INFO, logger="nightseg.train"):
        module = build_module(cfg)
    assert "model.options.input_norm=" in caplog.text and "model.name" not in caplog.text
    assert module.model.bgr and torch.allclose(module.model.mean.flatten(), torch.tensor(CAFFE_BGR["mean"]))
    x = torch.rand(1, 3, 32, 32)
    net.eval()
    module.model.eval()
    with torch.no_grad():
        assert torch.equal(module.model(x), net(x))  # the checkpoint's network, exactly
    assert math.isfinite(one_step(module))
    # the same checkpoint again: nothing to adopt, nothing logged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nightseg.train"):
        build_module(cfg)
    assert "method.init_checkpoint" not in caplog.text


def test_explicit_other_model_name_is_one_line_naming_both(tmp_path, hf_folder, run_cli):
    config = recipe(tmp_path)
    with pytest.raises(UserError, match="model.name=pspnet_nano, but method.init_checkpoint=.* holds a segformer_b0"):
        build_module(load_config(config, ["model.name=pspnet_nano", f"method.init_checkpoint={hf_folder}"]))
    r = run_cli("train", "--config", config, "model.name=pspnet_nano", f"method.init_checkpoint={hf_folder}",
                "--out", tmp_path / "run")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "pspnet_nano" in r.err and "segformer_b0" in r.err and not (tmp_path / "run").exists()
    # the same name given by hand is fine
    module = build_module(load_config(config, ["model.name=segformer_b0", "model.pretrained=false",
                                               f"method.init_checkpoint={hf_folder}"]))
    assert module.model.config["layer_norm_eps"] == 1e-5


def test_train_records_the_adopted_architecture(tmp_path, hf_folder, run_cli):
    """`nightseg train` end to end: config.yaml and the exported checkpoint hold the checkpoint's architecture."""
    run = tmp_path / "run"
    r = run_cli("train", "--config", recipe(tmp_path), f"method.init_checkpoint={hf_folder}",
                "data.source.crop=[32,32]", "data.source.scale=[1.0,1.0]",  # MiT's stage-1 reduction needs 32 pixels
                "--out", run)
    assert r.code == 0, r.err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "segformer_b0" and saved["model"]["options"]["layer_norm_eps"] == 1e-5
    _, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert meta["model"]["name"] == "segformer_b0"

"""The training engine: poly LR, data order, safe training state, exact resume after SIGKILL, 2-process DDP.

Everything runs on a tiny in-test dataset (32x32 images, a few classes) and a 2-conv network, both
importable as ``test_engine:tiny_dataset`` / ``test_engine:tiny_model`` so that subprocesses running
``python -m nightseg.cli train`` can build them (``tests/`` goes on their PYTHONPATH).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from torchvision import tv_tensors

from nightseg.core.classes import PALETTE

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
KILL_ENV = "NIGHTSEG_TEST_SIGKILL_AT_POSITION"
CLASSES = (0, 2, 8, 13)  # road, building, vegetation, car


# --------------------------------------------------------------------------------------------- fixtures
class TinyDataset(torch.utils.data.Dataset):
    """`n` deterministic 32x32 street-like samples: class stripes coloured by the Cityscapes palette + noise."""

    def __init__(self, root, split, transform=None, n: int = 10, size: int = 32, dark: bool = False):
        self.split, self.transform, self.n, self.size, self.dark = split, transform, n, size, dark
        self.names = [f"{split}_{i:03d}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        kill_at = os.environ.get(KILL_ENV)
        if kill_at is not None and self.split == "train" and torch.utils.data.get_worker_info() is None:
            # the kill-and-resume test: the subprocess SIGKILLs itself while fetching a later batch
            # (the engine passes the global sample position through StepStreams; we count fetches instead)
            TinyDataset.fetches = getattr(TinyDataset, "fetches", 0) + 1
            if TinyDataset.fetches > int(kill_at):
                os.kill(os.getpid(), signal.SIGKILL)
        rng = np.random.default_rng(1000 + index + (500 if self.split != "train" else 0))
        s = self.size
        cols = np.arange(s)[None, :].repeat(s, 0)
        rows = np.arange(s)[:, None].repeat(s, 1)
        stripe = ((cols // 8) + (rows // 16) + index) % len(CLASSES)
        label = np.asarray(CLASSES, dtype=np.uint8)[stripe]
        image = PALETTE[label].astype(np.float32) * (0.35 if self.dark else 1.0)
        image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
        label[:2] = 255  # some ignored pixels
        sample = {"image": tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                  "label": tv_tensors.Mask(torch.from_numpy(label)), "name": self.names[index]}
        if self.transform is not None:
            sample = self.transform(sample)
        return {"image": sample["image"].as_subclass(torch.Tensor).float() / 255.0,
                "label": sample["label"].as_subclass(torch.Tensor).long(), "name": sample["name"]}


def tiny_dataset(root, split, transform=None, **kw):
    return TinyDataset(root, split, transform, **kw)


class TinyNet(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU -> conv1x1: enough to learn colour -> class, with BN buffers to restore."""

    def __init__(self, num_classes: int = 19, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, num_classes, 1)
        self.config = {"name": "test_engine:tiny_model", "num_classes": num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def tiny_model(num_classes: int = 19, pretrained: bool = False, **kw):
    return TinyNet(num_classes, **kw)


def tiny_recipe(**train) -> dict:
    """A CPU recipe on the tiny dataset and model (plain data, ready for yaml.safe_dump)."""
    return {
        "method": {"name": "supervised"},
        "seed": 3,
        "data": {
            "root": ".", "batch_size": 2, "workers": 0,
            "source": {"dataset": "test_engine:tiny_dataset", "crop": [24, 24], "scale": [0.75, 1.25], "flip": True},
            "val": {"dataset": "test_engine:tiny_dataset", "split": "val", "options": {"n": 5, "dark": True}},
        },
        "model": {"name": "test_engine:tiny_model"},
        "optim": {"lr": 0.2},
        "train": {"max_steps": 8, "val_every": 4, "state_every": 2, "log_every": 1, "num_images": 2,
                  "accelerator": "cpu", "progress": False, "cpu_threads": 1, **train},
    }


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def write_recipe(folder: Path, recipe: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.pop(KILL_ENV, None)
    return env


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


# --------------------------------------------------------------------------------------------- unit tests
def test_poly_factor_values():
    from nightseg.core.schedule import poly_factor

    assert poly_factor(0, 100) == 1.0
    assert poly_factor(50, 100) == pytest.approx(0.5**0.9)
    assert poly_factor(99, 100) == pytest.approx(0.01**0.9)
    assert poly_factor(100, 100) == 0.0
    assert poly_factor(0, 100, warmup_steps=4) == pytest.approx(0.25)
    assert poly_factor(3, 100, warmup_steps=4) == pytest.approx(1.0)


def test_optimizer_lr_follows_poly_schedule():
    from nightseg.core.config import config_from_dict
    from nightseg.methods.supervised import build

    cfg = config_from_dict(tiny_recipe(max_steps=10))
    module = build(cfg)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.2 * (1 - k / 10) ** 0.9 for k in range(10)]
    assert seen == pytest.approx(expected, rel=1e-12)

    cfg = config_from_dict({**tiny_recipe(), "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}})
    opt = build(cfg).configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-3


def test_step_sampler_splits_positions_across_ranks_and_resumes():
    from itertools import islice

    from nightseg.data.streams import StepSampler

    r0 = list(islice(iter(StepSampler(2, 0, rank=0, world_size=2)), 6))
    r1 = list(islice(iter(StepSampler(2, 0, rank=1, world_size=2)), 6))
    assert r0 == [0, 1, 4, 5, 8, 9] and r1 == [2, 3, 6, 7, 10, 11]
    assert list(islice(iter(StepSampler(2, start_step=3)), 4)) == [6, 7, 8, 9]


def test_step_streams_are_a_pure_function_of_position():
    from nightseg.core.config import StreamConfig
    from nightseg.data.streams import StepStreams, build_transform

    transform = build_transform(StreamConfig(crop=[16, 16], scale=[0.5, 1.5], flip=True), train=True)
    streams = StepStreams({"source": TinyDataset(".", "train", transform, n=5),
                           "target": TinyDataset(".", "train", transform, n=3, dark=True)}, seed=1)
    first = [streams[p] for p in range(12)]
    torch.manual_seed(123)  # the global RNG state must not matter ...
    again = [streams[p] for p in reversed(range(12))][::-1]  # ... nor the access order
    for a, b in zip(first, again):
        for name in ("source", "target"):
            assert torch.equal(a[name]["image"], b[name]["image"]) and a[name]["name"] == b[name]["name"]
    # every epoch of 5 source samples visits each sample once, in a seed-dependent order
    names = [first[p]["source"]["name"] for p in range(10)]
    assert sorted(names[:5]) == sorted(names[5:]) == [f"train_{i:03d}" for i in range(5)]
    other = StepStreams({"source": TinyDataset(".", "train", transform, n=5)}, seed=2)
    assert [other[p]["source"]["name"] for p in range(10)] != names


def test_training_state_round_trip_without_pickle(tmp_path):
    from nightseg.core.training_state import load_state, save_state

    state = {"global_step": 7, "state_dict": {"a.weight": torch.randn(3, 2), "b": torch.arange(4)},
             "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [
                 {"lr": 0.1, "params": [0], "betas": (0.9, 0.999)}]}],
             "loops": {"x": {"nan": float("nan"), "inf": float("inf"), "none": None, "flag": True}},
             "arr": np.arange(3, dtype=np.int32), "dtype": torch.bfloat16}
    save_state(state, tmp_path / "state")
    back = load_state(tmp_path / "state")
    assert torch.equal(back["state_dict"]["a.weight"], state["state_dict"]["a.weight"])
    assert torch.equal(back["optimizer_states"][0]["state"][0]["momentum_buffer"], torch.ones(2))
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert math.isnan(back["loops"]["x"]["nan"]) and back["loops"]["x"]["inf"] == float("inf")
    assert back["loops"]["x"]["none"] is None and back["dtype"] is torch.bfloat16
    assert np.array_equal(back["arr"], np.arange(3))
    files = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert files[0] == "state.json" and len(files) == 2 and files[1].startswith("tensors-000000007-")
    # the state file is plain JSON; nothing in the folder is a pickle
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 7


def test_training_state_write_is_atomic(tmp_path, monkeypatch):
    import nightseg.core.training_state as tc

    folder = tmp_path / "state"
    tc.save_state({"global_step": 1, "w": torch.zeros(3)}, folder)

    def crash(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tc, "save_file", crash)
    with pytest.raises(OSError):
        tc.save_state({"global_step": 2, "w": torch.ones(3)}, folder)
    back = tc.load_state(folder)  # the previous state is intact and complete
    assert back["global_step"] == 1 and torch.equal(back["w"], torch.zeros(3))
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_training_state_errors_name_the_file(tmp_path):
    from nightseg.core.errors import UserError
    from nightseg.core.training_state import load_state

    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "state.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="state.json: not a NightSeg training state"):
        load_state(folder)


# --------------------------------------------------------------------------------------------- training runs
def test_train_writes_run_folder_and_learns(tmp_path):
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.core.config import config_from_dict
    from nightseg.engine import train

    cfg = config_from_dict(tiny_recipe(max_steps=12, val_every=6, state_every=6))
    metrics = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert metrics["finished"] and metrics["step"] == 12
    assert [h["step"] for h in metrics["history"]] == [6, 12]
    assert (run / "config.yaml").is_file() and (run / "state" / "state.json").is_file()
    tensors, meta = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert meta["model"] == {"name": "test_engine:tiny_model", "num_classes": 19}
    assert meta["recipe"] == cfg.recipe and meta["step"] == 12 and meta["config"]["seed"] == 3
    assert meta["metrics"]["mIoU"] == metrics["val"]["mIoU"]
    assert set(tensors) == {"conv1.weight", "conv1.bias", "bn.weight", "bn.bias", "bn.running_mean",
                            "bn.running_var", "bn.num_batches_tracked", "conv2.weight", "conv2.bias"}
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["metrics"]["mIoU"] == max(h["mIoU"] for h in metrics["history"])
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["val"]["pixels"] == 5 * 30 * 32  # 5 val images, 2 ignored rows each
    assert saved["val"]["mIoU"] > 0.25  # colour -> class is learnable in 12 steps, even on darker val images
    assert set(saved["val"]["per_class_iou"]) >= {"road", "car"}
    csv_text = (run / "logs" / "csv" / "metrics.csv").read_text()
    for column in ("train/loss", "train/ce_source", "train/lr", "val/mIoU", "val/mEF1", "val/iou/road"):
        assert column in csv_text.splitlines()[0]
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "logs" / "images" / "val_step0000012.png").is_file()
    # training again into the same folder without --resume is refused
    from nightseg.core.errors import UserError

    with pytest.raises(UserError, match="pass --resume"):
        train(cfg, run)
    # resuming with a different recipe is refused; run-time keys may change
    changed = config_from_dict(tiny_recipe(max_steps=12, val_every=6, state_every=6) | {"optim": {"lr": 0.1}})
    with pytest.raises(UserError, match=r"config.yaml: the config given differs from the run's at optim.lr"):
        train(changed, run, resume=True)
    done = train(config_from_dict(tiny_recipe(max_steps=12, val_every=6, state_every=6, log_every=3)), run, resume=True)
    assert done["finished"] and done["step"] == 12 and done["history"] == metrics["history"]  # nothing left to do


def test_supervised_init_checkpoint_starts_from_its_weights(tmp_path):
    """method.init_checkpoint: the module starts from the checkpoint's tensors (not its own init), and a
    checkpoint of another architecture is refused in one line naming the file."""
    from nightseg.core.config import config_from_dict
    from nightseg.core.errors import UserError
    from nightseg.engine import train
    from nightseg.methods.supervised import Supervised

    train(config_from_dict(tiny_recipe(max_steps=4, val_every=0)), tmp_path / "first")
    trained = weights(tmp_path / "first")
    fresh = Supervised(config_from_dict(tiny_recipe())).model.state_dict()
    assert not torch.equal(fresh["conv1.weight"], trained["conv1.weight"])
    recipe = tiny_recipe()
    recipe["method"]["init_checkpoint"] = str(tmp_path / "first" / "checkpoints" / "last.safetensors")
    started = Supervised(config_from_dict(recipe)).model.state_dict()
    same_tensors(started, trained)
    recipe["model"]["options"] = {"width": 4}
    with pytest.raises(UserError, match=r"last\.safetensors: tensor conv1.weight has shape \(8, 3, 3, 3\), the model expects \(4, 3, 3, 3\)"):
        Supervised(config_from_dict(recipe))


@pytest.mark.slow
def test_kill_and_resume_gives_identical_weights(tmp_path, run_cli):
    """Uninterrupted run vs. a subprocess SIGKILLed mid-run (after its step-4 state) and resumed."""
    from nightseg.core.config import config_from_dict
    from nightseg.engine import train

    recipe = tiny_recipe()
    straight = tmp_path / "straight"
    metrics_a = train(config_from_dict(recipe, "tiny"), straight)

    config = write_recipe(tmp_path, recipe)
    killed = tmp_path / "killed"
    env = cli_env()
    env[KILL_ENV] = str(2 * 6)  # each step fetches 2 samples (+1 prefetched batch): dies around step 5
    proc = subprocess.run([sys.executable, "-m", "nightseg.cli", "train", "--config", str(config),
                           "--out", str(killed)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    state = json.loads((killed / "state" / "state.json").read_text())
    assert state["step"] == 4  # the state of step 4 survived the kill; steps after it are lost
    assert not (killed / "metrics.json").read_text().count('"finished": true')

    result = run_cli("train", "--out", killed, "--resume")  # the run's own config.yaml
    assert result.code == 0, result.err
    metrics_b = json.loads((killed / "metrics.json").read_text())
    assert metrics_b["finished"] and metrics_b["step"] == 8
    same_tensors(weights(straight), weights(killed))
    assert metrics_b["val"]["mIoU"] == metrics_a["val"]["mIoU"]
    assert metrics_b["history"] == metrics_a["history"]
    assert csv_rows(killed) == csv_rows(straight)  # the logs continue too: no lost or duplicated steps


def csv_rows(run: Path) -> list[tuple]:
    import csv

    with (run / "logs" / "csv" / "metrics.csv").open(newline="") as file:
        return [(r["step"], r.get("train/loss"), r.get("val/mIoU")) for r in csv.DictReader(file)]


def test_sigterm_stops_at_step_boundary_and_resumes_exactly(tmp_path):
    import lightning as L

    from nightseg.core.config import config_from_dict
    from nightseg.engine import train

    class SendSigterm(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    recipe = tiny_recipe(max_steps=6, val_every=0, state_every=100)
    train(config_from_dict(recipe), tmp_path / "straight")
    stopped = train(config_from_dict(recipe), tmp_path / "run", callbacks=[SendSigterm()])
    assert not stopped["finished"] and stopped["interrupted"]
    assert json.loads((tmp_path / "run" / "state" / "state.json").read_text())["step"] == 4
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))
    resumed = train(config_from_dict(recipe), tmp_path / "run", resume=True)
    assert resumed["finished"] and resumed["step"] == 6
    same_tensors(weights(tmp_path / "straight"), weights(tmp_path / "run"))


@pytest.mark.slow
def test_two_process_ddp_on_cpu_reduces_the_confusion_matrix(tmp_path):
    """`nightseg train` with 2 CPU processes (gloo): the val scores equal a 1-process evaluation."""
    from nightseg.core.checkpoint import load_checkpoint
    from nightseg.evaluation.exposure import ExposureConfusion, exposure_scores
    from nightseg.evaluation.metrics import segmentation_scores

    recipe = tiny_recipe(max_steps=4, val_every=4, state_every=4, devices=2)
    recipe["data"]["val"]["options"]["n"] = 5  # odd: the ranks get 3 and 2 images
    config = write_recipe(tmp_path, recipe)
    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "nightseg.cli", "train", "--config", str(config), "--out", str(run)],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["step"] == 4

    tensors, _ = load_checkpoint(run / "checkpoints" / "last.safetensors")
    model = TinyNet()
    model.load_state_dict(tensors)
    model.eval()
    confusion = ExposureConfusion(19)
    data = TinyDataset(".", "val", n=5, dark=True)
    with torch.no_grad():
        for i in range(len(data)):
            sample = data[i]
            pred = model(sample["image"][None]).argmax(1)
            confusion.update(pred, sample["label"][None], sample["image"][None])
    scores = segmentation_scores(confusion.total())
    assert metrics["val"]["pixels"] == scores["pixels"] == 5 * 30 * 32  # both ranks' shards were summed
    assert metrics["val"]["mIoU"] == pytest.approx(scores["mIoU"], abs=1e-12)
    assert metrics["val"]["mEF1"] == pytest.approx(exposure_scores(confusion)["mEF1"], abs=1e-12)
    for name, iou in metrics["val"]["per_class_iou"].items():
        expected = scores["per_class"][name]["iou"]
        assert (iou is None and math.isnan(expected)) or iou == pytest.approx(expected, abs=1e-12)


def test_cli_train_bad_config_exits_2_naming_the_file(tmp_path, run_cli):
    bad = write_recipe(tmp_path, {**tiny_recipe(), "trian": {"max_steps": 3}}, "bad.yaml")
    result = run_cli("train", "--config", bad, "--out", tmp_path / "run")
    assert result.code == 2
    assert str(bad) in result.err and "trian" in result.err and "valid keys" in result.err
    assert len(result.err.strip().splitlines()) == 1
    good = write_recipe(tmp_path, tiny_recipe(), "good.yaml")
    result = run_cli("train", "--config", good, "train.max_step=3")
    assert result.code == 2 and "train.max_step=3" in result.err and "max_steps" in result.err
    missing = tmp_path / "no_data"
    result = run_cli("train", "--config", good, f"data.root={missing}", "data.source.dataset=cityscapes",
                     "--out", tmp_path / "run2")
    assert result.code == 2 and f"{missing}: dataset root not found" in result.err
    assert not (tmp_path / "run2").exists()  # nothing is written before the data is found

"""The ULCA recipe (ULCA): a few training steps on tiny random data, switches, frozen relighting, export.

Tiny datasets below are importable as ``test_ulca:tiny_source`` / ``tiny_pairs`` / ``tiny_val`` so that
the engine's ``module:factory`` dataset hook can build them.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from nightseg.core.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.core.classes import IGNORE_INDEX
from nightseg.core.config import config_from_dict, load_config
from nightseg.core.errors import UserError
from nightseg.losses.segmentation import class_weights
from nightseg.methods.ulca import ULCA
from nightseg.models import DCENet, build_segmenter
from nightseg.models.relight import load_dce_weights, relight, save_dce_weights, split_relight

REPO = Path(__file__).resolve().parents[1]
SRC_HW = (32, 64)
PAIR_HW = (48, 80)  # larger than the source: NightMix crops the night image to the source size
CLASSES = torch.tensor([0, 1, 2, 5, 8, 10, 11, 13])  # road sidewalk building pole vegetation sky person car


def _label(gen: torch.Generator, hw: tuple[int, int]) -> torch.Tensor:
    """Blocky random label map with a few ignored pixels."""
    h, w = hw
    coarse = CLASSES[torch.randint(0, len(CLASSES), (h // 8, w // 8), generator=gen)]
    label = coarse.repeat_interleave(8, 0).repeat_interleave(8, 1)
    label[0, :4] = IGNORE_INDEX
    return label


class TinySource(Dataset):
    def __init__(self, n: int = 4) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(100 + i)
        return {"image": torch.rand(3, *SRC_HW, generator=gen), "label": _label(gen, SRC_HW), "name": f"src{i}"}


class TinyPairs(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(200 + i)
        day = torch.rand(3, *PAIR_HW, generator=gen)
        return {"night": day * 0.2, "day": day, "name": f"pair{i}"}


class TinyVal(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(300 + i)
        return {"image": torch.rand(3, *SRC_HW, generator=gen) * 0.2, "label": _label(gen, SRC_HW), "name": f"val{i}"}


def tiny_source(root, split, transform=None, **kw):
    return TinySource(**kw)


def tiny_pairs(root, split, transform=None, **kw):
    return TinyPairs()


def tiny_val(root, split, transform=None, **kw):
    return TinyVal()


# --------------------------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def relight_weights(tmp_path_factory) -> Path:
    """A random (but fixed) DCE-Net saved as NightSeg safetensors."""
    path = tmp_path_factory.mktemp("relight") / "dce.safetensors"
    save_dce_weights(DCENet(generator=torch.Generator().manual_seed(0)), path)
    return path


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_cfg(root: Path, relight: Path | None, method: dict | None = None, **sections):
    raw = {
        "recipe": "ulca_test",
        "seed": 0,
        "method": {"name": "ulca", "relight": {"weights": str(relight) if relight else None}},
        "data": {
            "root": str(root), "batch_size": 2, "workers": 0,
            "source": {"dataset": "test_ulca:tiny_source"},
            "target": {"dataset": "test_ulca:tiny_pairs"},
            "val": {"dataset": "test_ulca:tiny_val"},
        },
        "model": {"name": "pspnet_tiny"},
        "optim": {"lr": 0.01},
        "train": {"max_steps": 3, "val_every": 3, "state_every": 3, "log_every": 1, "progress": False},
    }
    raw["method"] = _merge(raw["method"], method or {})
    for name, value in sections.items():
        raw[name] = _merge(raw[name], value)
    return config_from_dict(raw, source="test")


def make_batch() -> dict:
    src = [TinySource()[i] for i in range(2)]
    pairs = [TinyPairs()[i] for i in range(2)]
    return {
        "source": {"image": torch.stack([s["image"] for s in src]), "label": torch.stack([s["label"] for s in src])},
        "target": {"night": torch.stack([p["night"] for p in pairs]), "day": torch.stack([p["day"] for p in pairs])},
    }


def run_step(module: ULCA, batch: dict) -> tuple[torch.Tensor, dict[str, float], int]:
    """One training step outside a Trainer: returns (total loss, logged values, encoder calls)."""
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    calls = []
    encode = module.model.encode

    def counting_encode(x):
        calls.append(tuple(x.shape))
        return encode(x)

    module.model.encode = counting_encode  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        total = module.training_step(batch, 0)
    finally:
        del module.model.encode
    return total, logged, len(calls)


# --------------------------------------------------------------------------------------------- tests
def test_full_step_terms_gradients_and_frozen_relight(tmp_path, relight_weights):
    module = ULCA(make_cfg(tmp_path, relight_weights))
    module.train()
    total, logged, encodes = run_step(module, make_batch())
    for term in ("seg", "static", "mix", "kl"):
        assert math.isfinite(logged[f"train/{term}"]), term
        assert logged[f"train/{term}"] > 0, term
    # Eq. 9: L_total = L_seg + L_static + 0.04 L_mix + 0.75 L_kl
    expected = logged["train/seg"] + logged["train/static"] + 0.04 * logged["train/mix"] + 0.75 * logged["train/kl"]
    assert logged["train/loss"] == pytest.approx(expected, rel=1e-5)
    assert 0 < logged["train/mix_share"] < 1
    # A, B_d (no grad), B_n (doubles as the weak branch), X_A, strong B_n: five encoder passes.
    assert encodes == 5
    total.backward()
    seg = module.model.segmenter
    first = next(seg.backbone.parameters())  # the stem's first conv: the deepest point of the backward
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
    assert float(seg.head.classifier.weight.grad.abs().sum()) > 0
    assert float(module.model.attention.alpha.grad.abs()) > 0  # cross attention trains
    for q in module.relight.parameters():
        assert not q.requires_grad and q.grad is None
    trainable = {id(q) for g in module.param_groups() for q in g["params"]}
    assert not any(id(q) in trainable for q in module.relight.parameters())


@pytest.mark.parametrize(("switch", "term"), [("static", "static"), ("nightmix", "mix"), ("consistency", "kl")])
def test_each_switch_removes_its_term(tmp_path, relight_weights, switch, term):
    module = ULCA(make_cfg(tmp_path, relight_weights, {switch: {"enabled": False}}))
    _, logged, encodes = run_step(module, make_batch())
    assert f"train/{term}" not in logged
    present = {t: logged.get(f"train/{t}", 0.0) for t in ("seg", "static", "mix", "kl")}
    expected = present["seg"] + present["static"] + 0.04 * present["mix"] + 0.75 * present["kl"]
    assert logged["train/loss"] == pytest.approx(expected, rel=1e-5)
    assert encodes == (5 if switch == "static" else 4)


def test_relight_and_cross_attention_switches(tmp_path, relight_weights, monkeypatch):
    monkeypatch.delenv("NIGHTSEG_RELIGHT_WEIGHTS", raising=False)
    module = ULCA(make_cfg(tmp_path, None, {"relight": {"enabled": False}, "cross_attention": {"enabled": False}}))
    assert module.relight is None and not hasattr(module.model, "attention")
    _, logged, _ = run_step(module, make_batch())
    assert "train/ca_alpha" not in logged and math.isfinite(logged["train/loss"])
    x = torch.rand(2, 3, *SRC_HW)
    module.eval()
    assert torch.equal(module.predict_logits(x), module.model(x))  # no relighting at test time either
    # Relight on but no weights anywhere: a clear error naming the key.
    with pytest.raises(UserError, match=r"method\.relight\.weights"):
        ULCA(make_cfg(tmp_path, None))


@pytest.mark.parametrize(("share", "encodes", "grad_encodes"), [("weak", 5, 4), ("none", 6, 4), ("strong", 5, 3)])
def test_shared_forward_variants_and_hard_target(tmp_path, relight_weights, share, encodes, grad_encodes):
    module = ULCA(make_cfg(tmp_path, relight_weights, {"consistency": {"shared_forward": share, "target": "hard"}}))
    grad_calls: list[bool] = []
    backbone = module.model.segmenter.backbone
    handle = backbone.register_forward_pre_hook(lambda *_: grad_calls.append(torch.is_grad_enabled()))
    _, logged, n = run_step(module, make_batch())
    handle.remove()
    assert n == len(grad_calls) == encodes and sum(grad_calls) == grad_encodes
    for term in ("seg", "static", "mix", "kl"):
        assert math.isfinite(logged[f"train/{term}"]) and logged[f"train/{term}"] > 0, term


def test_cross_attention_day_values_and_self_attention_for_unpaired_images(tmp_path, relight_weights):
    module = ULCA(make_cfg(tmp_path, relight_weights, {"cross_attention": {"value": "day", "unpaired": "self"}}))
    with torch.no_grad():
        module.model.attention.alpha.fill_(0.1)  # so that the attention changes the features
    total, logged, _ = run_step(module, make_batch())
    total.backward()
    assert math.isfinite(logged["train/loss"])
    assert float(module.model.attention.value.weight.grad.abs().sum()) > 0  # V (from the day) trains


def test_predict_relights_then_applies_test_policy(tmp_path, relight_weights):
    module = ULCA(make_cfg(tmp_path, relight_weights, {"cross_attention": {"test_policy": "self"}}))
    module.eval()
    x = torch.rand(2, 3, *SRC_HW) * 0.3
    relit = relight(load_dce_weights(relight_weights), x)
    assert not torch.allclose(relit, x)
    with torch.no_grad():
        module.model.attention.alpha.fill_(0.5)
        expected = module.model.decode(
            [*module.model.encode(relit)[:-1], module.model.attention(module.model.encode(relit)[-1], None, "self")],
            x.shape[-2:])
        assert torch.allclose(module.predict_logits(x), expected, atol=1e-5)
    assert module.export_model_config()["cross_attention"]["policy"] == "self"


def test_class_weights_from_source_frequencies(tmp_path, relight_weights):
    module = ULCA(make_cfg(tmp_path, relight_weights, {"class_frequencies": "source"}))
    assert module.seg_weight is None
    module.setup("fit")
    counts = torch.zeros(19, dtype=torch.float64)
    for i in range(len(TinySource())):
        lab = TinySource()[i]["label"]
        counts += torch.bincount(lab[lab != IGNORE_INDEX], minlength=19).double()
    assert torch.allclose(module.seg_weight, class_weights(counts), rtol=1e-5)
    assert torch.allclose(module.pl_weight, class_weights(counts, "dannet_log"), rtol=1e-5)
    # Cityscapes default: w_k = 1/a_k of DANNet's table (road ~ 2.7).
    default = ULCA(make_cfg(tmp_path, relight_weights))
    assert float(default.seg_weight[0]) == pytest.approx(1 / 0.36869696, rel=1e-3)


def test_init_checkpoint_loads_a_plain_segmenter_under_cross_attention(tmp_path, relight_weights):
    plain = build_segmenter("pspnet_tiny")
    path = save_checkpoint(tmp_path / "src.safetensors", plain.state_dict(), {"model": plain.config})
    module = ULCA(make_cfg(tmp_path, relight_weights, {"init_checkpoint": str(path)}))
    for key, value in plain.state_dict().items():
        assert torch.equal(module.model.segmenter.state_dict()[key], value), key
    assert float(module.model.attention.alpha.detach()) == 0.0


def test_engine_trains_logs_and_exports(tmp_path, relight_weights):
    from nightseg.engine import train

    cfg = make_cfg(tmp_path, relight_weights)
    before = {k: v.clone() for k, v in ULCA(cfg).model.state_dict().items()}
    metrics = train(cfg, tmp_path / "run")
    assert metrics["finished"] and metrics["step"] == 3
    assert math.isfinite(metrics["val"]["mIoU"])
    with open(tmp_path / "run" / "logs" / "csv" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    logged = {k for row in rows for k, v in row.items() if v not in ("", None)}
    for term in ("train/loss", "train/seg", "train/static", "train/mix", "train/kl", "train/ca_alpha"):
        assert term in logged, term
    for row in rows:
        for key in ("train/seg", "train/static", "train/mix", "train/kl"):
            if row.get(key):
                assert math.isfinite(float(row[key]))
    tensors, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    seg_tensors, seg_config, relight = split_relight(tensors, meta["model"])
    # The relighting net is exported unchanged (frozen), the segmenter has trained.
    original = load_dce_weights(relight_weights).state_dict()
    for key, value in relight.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert any(not torch.equal(seg_tensors[k], before[k]) for k in before if before[k].is_floating_point())
    rebuilt = build_segmenter(**seg_config)
    load_state_into(rebuilt, seg_tensors, "exported")
    assert seg_config["cross_attention"]["value"] == "night"


# --------------------------------------------------------------------------------------------- configs
TABLE3 = {
    # file: (static, nightmix, consistency, cross attention); relighting is on in every row
    "ulca_relight_static.yaml": (True, False, False, False),
    "ulca_nightmix.yaml": (True, True, False, False),
    "ulca_consistency.yaml": (True, True, True, False),
    "ulca_full.yaml": (True, True, True, True),
}


@pytest.mark.parametrize("name", sorted(TABLE3))
def test_table3_rows_are_configs(name):
    m = load_config(REPO / "configs" / "cpu" / name).method
    assert m.name == "ulca" and m.relight.enabled
    assert (m.static.enabled, m.nightmix.enabled, m.consistency.enabled, m.cross_attention.enabled) == TABLE3[name]


def test_paper_gpu_config():
    cfg = load_config(REPO / "configs" / "ulca.yaml")
    m = cfg.method
    assert (m.nightmix.weight, m.consistency.weight, m.static.weight) == (0.04, 0.75, 1.0)
    assert m.class_weights == "inverse" and m.relight.enabled and m.cross_attention.enabled
    assert cfg.model.name == "pspnet_r101"
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.poly_power) == ("sgd", 2.5e-4, 0.9, 5e-4, 0.9)
    d = cfg.data
    assert d.batch_size == 2
    assert (d.source.crop, d.source.scale, d.source.flip) == ([512, 512], [0.5, 1.0], True)
    assert (d.target.crop, d.target.scale, d.target.flip) == ([960, 960], [0.9, 1.1], True)
    assert d.target.dataset == "dark_zurich_pairs"
    cpu = load_config(REPO / "configs" / "cpu" / "ulca.yaml")
    assert cpu.method.cross_attention.enabled and cpu.model.name != "pspnet_r101"


def test_qk_channels_option_sets_the_query_key_width(tmp_path, relight_weights):
    full = ULCA(make_cfg(tmp_path, relight_weights, {"cross_attention": {"qk_channels": "full"}}))
    reduced = ULCA(make_cfg(tmp_path, relight_weights))
    c = full.model.feature_channels
    assert full.model.attention.query.weight.shape[0] == full.model.attention.key.weight.shape[0] == c  # the paper
    assert reduced.model.attention.query.weight.shape[0] == c // 8  # SAGAN's C/8
    assert full.export_model_config()["cross_attention"]["qk_channels"] == "full"
    assert reduced.export_model_config()["cross_attention"]["qk_channels"] == load_config(
        REPO / "configs" / "ulca.yaml").method.cross_attention.qk_channels


def test_dannet_night_crop_option_resizes_960_pairs_to_512():
    from torchvision import tv_tensors

    from nightseg.data.streams import build_transform

    frame = {"image": tv_tensors.Image(torch.zeros(3, 1080, 1920, dtype=torch.uint8)),
             "day": tv_tensors.Image(torch.zeros(3, 1080, 1920, dtype=torch.uint8))}
    paper = load_config(REPO / "configs" / "ulca.yaml")
    assert paper.data.target.crop == [960, 960] and paper.data.target.out_size is None  # the seed's 960 crops
    out = build_transform(paper.data.target, train=True)(frame)
    assert out["image"].shape == out["day"].shape == (3, 960, 960)
    dannet = load_config(REPO / "configs" / "ulca.yaml", ["data.target.out_size=[512,512]"])
    out = build_transform(dannet.data.target, train=True)(frame)
    assert out["image"].shape == out["day"].shape == (3, 512, 512)  # DANNet: 960 crop, resized to 512

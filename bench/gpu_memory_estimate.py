"""Estimate, on the CPU, the peak GPU training memory of every paper-sized recipe (issue 23).

    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_memory_estimate.py --out mem.json
    .venv/bin/python bench/gpu_memory_estimate.py --only ulca --set "data.target.crop=[768,768]"

Per recipe of ``src/nightseg/configs/*.yaml`` (the model at the config's size, ``pretrained=false``), in
bytes, what ``torch.cuda.max_memory_allocated`` would count:

* **weights**: every parameter and buffer (fp32), counted exactly from the built LightningModule (frozen
  nets such as ULCA's Zero-DCE included);
* **gradients**: one fp32 tensor per trainable parameter (``param_groups()``, what the optimiser gets);
* **optimiser state**: SGD with momentum 1x the trainable bytes, AdamW 2x;
* **activations**: one ``training_step`` of the recipe on a random batch of the config's crops and batch
  size, run under CPU autocast in bfloat16 when the recipe trains in mixed precision on a GPU
  (``train.precision: auto``), inside `torch.autograd.graph.saved_tensors_hooks`: every tensor autograd
  saves for the backward pass is counted once (same storage while it is alive = once; parameters are
  not activations) and replaced by an empty placeholder, so the CPU never holds the activations and no
  backward runs. At the end of the forward pass all of them are alive at once: that is the peak of the
  step, plus, during the backward pass, the gradients of the activations being processed, estimated as
  twice the largest saved tensor (**backward margin**).

The sum is the estimate of the peak allocated memory. On a card, the CUDA context and cuDNN's workspaces
(~0.5-1 GB) and the caching allocator's fragmentation come on top: a recipe is called fitting a card of
G GB when ``1.15 * estimate + 1 GiB <= G GB``. CPU autocast runs convolutions and matmuls in bf16 as CUDA's
does, but keeps softmax, layer norm and others in bf16 where CUDA runs them in fp32: `CudaAutocastFp32`
runs CUDA's fp32 ops in fp32 here too. The activation figure stays an estimate to be checked against
bench/gpu_check.py's measured peak on a GPU (docs/benchmarks.md has both, measured on an H200).

NightLab's RDN stage (fp32, ``method.rdn`` sizes on 1024x512 NightCity frames) and the CycleGAN generator
phase of the translation step (fp32, 512x1024, CycleGAN's 64 channels / 9 blocks) are estimated the same
way from their own forward passes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from nightseg.core.config import Config, load_config
from nightseg.core.io import write_json
from nightseg.core.seeding import reseed
from nightseg.engine import build_module
from nightseg.methods.nightlab import build_rdn
from nightseg.models.relight import DCENet, save_dce_weights
from nightseg.pipelines.recipes import CONFIG_DIR
from nightseg.pipelines.translation import CycleGAN, TranslatorSettings, cycle_loss, identity_loss, lsgan_loss

GIB = 2**30
CARDS_GB = (24, 12, 11)
PAIR_KEYS = {"dark_zurich_pairs": ("night", "day")}
"""Datasets whose samples hold other image keys than ``image`` (and no label)."""


class SavedTensorCounter:
    """Counts the bytes autograd saves for backward (each live storage once, parameters excluded) and
    hands autograd an empty placeholder instead, so that the activations are never kept."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.live: dict[tuple[int, int], weakref.ref] = {}
        self.total = 0
        self.largest = 0
        self.count = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key[0] not in self.exclude and key[1] > 0:
            seen = self.live.get(key)
            if seen is None or seen() is None:  # a new storage (or a dead one's address reused)
                self.live[key] = weakref.ref(t)
                self.total += key[1]
                self.largest = max(self.largest, key[1])
                self.count += 1
        return torch.empty(0)

    @staticmethod
    def unpack(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the memory estimate runs no backward pass")

    @contextlib.contextmanager
    def counting(self) -> Iterator[SavedTensorCounter]:
        """Count inside this block."""
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


def tensor_bytes(tensors: Any) -> int:
    """Return the bytes of an iterable of tensors (each storage once)."""
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def make_batch(cfg: Config) -> tuple[dict[str, Any], int]:
    """Return a random training batch of the config's crops and batch size, and its number of images."""
    g = torch.Generator().manual_seed(0)
    batch, images = {}, 0
    for name in ("source", "target"):
        s = getattr(cfg.data, name)
        if s.dataset is None:
            continue
        h, w = s.out_size or s.crop or s.options.get("size") or s.resize or (512, 1024)
        keys = PAIR_KEYS.get(s.dataset, ("image",))
        b = cfg.data.batch_size
        sample: dict[str, Any] = {k: torch.rand(b, 3, h, w, generator=g) for k in keys}
        if s.dataset not in PAIR_KEYS:
            sample["label"] = torch.randint(0, cfg.model.num_classes, (b, h, w), generator=g)
        sample["name"] = [f"estimate_{i}" for i in range(b)]
        batch[name] = sample
        images += b * len(keys)
    return batch, images


def mixed_precision(cfg: Config) -> bool:
    """Return whether the recipe trains in mixed precision on a GPU (``auto`` resolves to bf16/16-mixed)."""
    return cfg.train.precision == "auto" or "mixed" in cfg.train.precision


CUDA_FP32_OPS = frozenset({
    "__pow__", "__rpow__", "__rdiv__", "__rtruediv__", "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log",
    "log10", "log1p", "log2", "pow", "reciprocal", "rsqrt", "sinh", "tan", "softmax", "log_softmax", "softmin",
    "softplus", "sum", "prod", "cumsum", "cumprod", "layer_norm", "group_norm", "norm", "normalize", "renorm",
    "cross_entropy", "nll_loss", "kl_div", "l1_loss", "mse_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits",
    "cosine_similarity", "cdist", "dist", "pdist",
})
"""Ops that CUDA autocast runs in float32 (PyTorch's AMP docs, "CUDA Ops that can autocast to float32").
CPU autocast leaves most of them in bfloat16, which undercounted the H200's measured peaks of the MiT
recipes by 30-36 % (softmax and layer norm outputs saved at half their GPU size; docs/benchmarks.md)."""


def _upcast(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(v) for v in value)
    return value


class CudaAutocastFp32(torch.overrides.TorchFunctionMode):
    """Inside CPU autocast, run `CUDA_FP32_OPS` on float32 inputs as CUDA autocast does, so that the tensors
    they save and return have the GPU's dtype."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in CUDA_FP32_OPS:
            args, kwargs = _upcast(args), {k: _upcast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def activations(step: Callable[[], Any], exclude: set[int], autocast: bool) -> SavedTensorCounter:
    """Run `step` (a forward pass) counting the tensors saved for backward; return the counter. With
    `autocast`, CPU bf16 autocast with CUDA's float32 ops (`CudaAutocastFp32`) stands for CUDA's bf16-mixed."""
    counter = SavedTensorCounter(exclude)
    fp32_ops = CudaAutocastFp32() if autocast else contextlib.nullcontext()
    with counter.counting(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), fp32_ops:
        step()
    return counter


def summary(name: str, detail: str, weights: int, grads: int, state: int, counter: SavedTensorCounter,
            precision: str) -> dict[str, Any]:
    """Return one row (bytes of weights, gradients, optimiser state; the counted activations) in GiB, the
    estimate, and which cards it fits."""
    margin = 2 * counter.largest
    total = weights + grads + state + counter.total + margin
    row = {"row": name, "detail": detail, "precision": precision, "weights_gib": weights / GIB,
           "grads_gib": grads / GIB, "optimizer_gib": state / GIB, "activations_gib": counter.total / GIB,
           "saved_tensors": counter.count, "backward_margin_gib": margin / GIB, "estimate_gib": total / GIB}
    for card in CARDS_GB:
        row[f"fits_{card}gb"] = 1.15 * total + GIB <= card * 1e9
    return row


def estimate_recipe(path: Path, overrides: list[str], relight: Path) -> tuple[dict[str, Any], Config]:
    """Return the memory row of the recipe at `path` (see the module docstring) and its config."""
    method = load_config(path).method
    base = ["model.pretrained=false"]
    if hasattr(method, "init_checkpoint"):
        base.append("method.init_checkpoint=null")
    if hasattr(method, "relight"):  # ULCA and the recipes built on it
        base.append(f"method.relight.weights={relight}")
    cfg = load_config(path, [*base, *overrides])
    reseed(0)
    module = build_module(cfg)
    module.log = lambda *a, **k: None  # no Trainer attached: logging is a no-op here
    fd = getattr(cfg.method, "feature_distance", None)
    if fd is not None and fd.enabled and getattr(module, "imnet", False) is None:
        # DAFormer/HRDA/MIC keep a frozen ImageNet encoder copy; without downloaded weights they switch it
        # off, so put an (untrained) copy in: it costs the same memory
        module.enable_feature_distance(copy.deepcopy(module.model.backbone))
    module.train()
    params = set(module.parameters())
    trainable = [p for g in module.param_groups() for p in g["params"]]
    weights = tensor_bytes([*params, *module.buffers()])
    exclude = {p.untyped_storage().data_ptr() for p in params}
    batch, images = make_batch(cfg)
    counter = activations(lambda: module.training_step(batch, 0), exclude, mixed_precision(cfg))
    crops = " + ".join("x".join(map(str, batch[s][k].shape[-2:])) + f" x{batch[s][k].shape[0]}"
                       for s in batch for k in batch[s] if k in ("image", "night", "day"))
    factor = 2 if cfg.optim.name == "adamw" else (1 if cfg.optim.momentum else 0)
    grads = tensor_bytes(trainable)
    row = summary(cfg.recipe, f"{cfg.model.name}; {crops}", weights, grads, factor * grads, counter,
                  "bf16 autocast" if mixed_precision(cfg) else "fp32")
    row["images_per_step"] = images
    return row, cfg


def estimate_rdn(cfg: Config, size: tuple[int, int] = (512, 1024)) -> dict[str, Any]:
    """Return the memory row of NightLab's RDN stage (fp32, ``method.rdn.batch_size`` frames of `size`)."""
    p = cfg.method.rdn
    rdn = build_rdn(p).train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(p.batch_size, 3, *size, generator=g)
    boxes = [torch.tensor([[100.0, 100.0, 180.0, 260.0], [400.0, 200.0, 440.0, 300.0]])] * p.batch_size
    params = list(rdn.parameters())
    exclude = {q.untyped_storage().data_ptr() for q in params}
    torch.manual_seed(0)
    counter = activations(lambda: rdn.losses(x, boxes), exclude, False)
    trainable = [q for q in params if q.requires_grad]
    return summary("nightlab RDN", f"RDN stages {p.stages}; {size[0]}x{size[1]} x{p.batch_size}",
                   tensor_bytes([*params, *rdn.buffers()]), tensor_bytes(trainable), tensor_bytes(trainable), counter,
                   "fp32")


def estimate_translation(size: tuple[int, int] = (512, 1024)) -> dict[str, Any]:
    """Return the memory row of the CycleGAN step's generator phase (the larger of its two; fp32)."""
    s = TranslatorSettings(size=size, channels=64, blocks=9, disc_channels=64)
    nets = CycleGAN(s).train()
    g = torch.Generator().manual_seed(0)
    day, night = (torch.rand(1, 3, *size, generator=g) * 2 - 1 for _ in range(2))

    def generator_phase() -> None:  # the loss of `training_step`'s generator update, before its backward
        fake_night, fake_day = nets.G_day2night(day), nets.G_night2day(night)
        adv = lsgan_loss(nets.D_night(fake_night), True) + lsgan_loss(nets.D_day(fake_day), True)
        cyc = cycle_loss(day, nets.G_night2day(fake_night)) + cycle_loss(night, nets.G_day2night(fake_day))
        idt = identity_loss(night, nets.G_day2night(night)) + identity_loss(day, nets.G_night2day(day))
        (adv + cyc + idt).sum()

    params = list(nets.parameters())
    counter = activations(generator_phase, {q.untyped_storage().data_ptr() for q in params}, False)
    generators = nets.generator_params()
    # Adam: 2 states per parameter of both groups; gradients of the generators (the discriminators' come later)
    return summary("translation (CycleGAN)", f"64 ch / 9 blocks; {size[0]}x{size[1]} x1 per domain",
                   tensor_bytes([*params, *nets.buffers()]), tensor_bytes(generators), 2 * tensor_bytes(params),
                   counter, "fp32")


def table(rows: list[dict[str, Any]]) -> str:
    """Return the Markdown table of the estimate rows."""
    head = ("| recipe | model; images per step | precision | weights | grads | optimiser | activations "
            "| backward margin | **estimate (GiB)** | 24 GB | 12 GB | 11 GB |")
    lines = [head, "|" + "---|" * 12]
    yes = {True: "yes", False: "no"}
    for r in rows:
        lines.append(f"| {r['row']} | {r['detail']} | {r['precision']} | {r['weights_gib']:.2f} | {r['grads_gib']:.2f} "
                     f"| {r['optimizer_gib']:.2f} | {r['activations_gib']:.2f} | {r['backward_margin_gib']:.2f} "
                     f"| **{r['estimate_gib']:.1f}** | {yes[r['fits_24gb']]} | {yes[r['fits_12gb']]} "
                     f"| {yes[r['fits_11gb']]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Estimate every recipe (or --only ones), print the table, write --out; return 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="recipe stems (and/or 'translation')")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--relight", type=Path, default=Path("/tmp/nightseg-estimate-dce.safetensors"),
                        help="where to write ULCA's random Zero-DCE weights")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    relight = save_dce_weights(DCENet(generator=torch.Generator().manual_seed(0)), args.relight)
    rows = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        if args.only and path.stem not in args.only:
            continue
        row, cfg = estimate_recipe(path, args.set, relight)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if cfg.method.name == "nightlab":
            rows.append(estimate_rdn(cfg))
    if not args.only or "translation" in args.only:
        rows.append(estimate_translation())
    print(table(rows))
    if args.out:
        write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

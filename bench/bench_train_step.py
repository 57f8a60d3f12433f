"""Time one training step (forward, backward, optimizer and LR-scheduler step) of each recipe.

    .venv/bin/python bench/bench_train_step.py                      # the CPU recipes, CPU
    .venv/bin/python bench/bench_train_step.py --steps 30 --threads 2
    .venv/bin/python bench/bench_train_step.py --device cuda configs/supervised_cityscapes.yaml
    .venv/bin/python bench/bench_train_step.py --interleave --threads 1 configs/cpu/supervised_cityscapes.yaml \
        configs/cpu/dacs.yaml          # round-robin: fair ratios on a busy machine

The batch is random data of the recipe's crop size and batch size (data loading is not timed; see
bench_dataloader.py), built per stream from `STREAM_KEYS`; the step is exactly the recipe's
``training_step`` plus ``backward``, ``optimizer.step`` and ``scheduler.step`` from its
``configure_optimizers``. On CUDA the step runs under the recipe's AMP (bf16 where supported). Printed:
median and min step time and images/s, where images counts every input image of the batch (a joint
supervised step holds 2 x batch_size images).

To add a recipe, give its config on the command line or append it to `DEFAULT_CONFIGS`; a dataset whose
samples are not ``{"image", "label"}`` needs an entry in `STREAM_KEYS`. Recipes that relight (ULCA,
``ulca_st``) use ``$NIGHTSEG_RELIGHT_WEIGHTS``, else a random DCE-Net (the step time
does not depend on its weights). The teacher of the self-training recipes is updated in every timed step
(outside a Trainer its warm-up alpha stays 0, which costs the same as any other alpha).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [
    "configs/cpu/supervised_cityscapes.yaml",
    "configs/cpu/supervised_joint.yaml",
    # self-training recipes (issue 20): same model, source crop and batch as the supervised row above
    "configs/cpu/dacs.yaml",
    "configs/cpu/daformer.yaml",
    "configs/cpu/mic.yaml",
    "configs/cpu/hrda.yaml",
    "configs/cpu/ulca.yaml",
    "configs/cpu/ulca_st.yaml",
]
STREAM_KEYS = {
    # dataset name -> (image keys, labelled)
    "dark_zurich_pairs": (("night", "day"), False),
}


def make_batch(cfg, device: torch.device) -> tuple[dict, int]:
    """Return a random batch for the recipe `cfg` and the number of images in it."""
    batch, images = {}, 0
    for name in ("source", "target"):
        stream = getattr(cfg.data, name)
        if stream.dataset is None:
            continue
        h, w = stream.crop or stream.resize or (256, 512)
        keys, labelled = STREAM_KEYS.get(stream.dataset, (("image",), True))
        b = cfg.data.batch_size
        sample = {key: torch.rand(b, 3, h, w, device=device) for key in keys}
        if labelled:
            sample["label"] = torch.randint(0, cfg.model.num_classes, (b, h, w), device=device)
        sample["name"] = [f"bench_{i}" for i in range(b)]
        batch[name] = sample
        images += b * len(keys)
    return batch, images


def relight_weights() -> str:
    """Return DCE-Net weights for relighting recipes: $NIGHTSEG_RELIGHT_WEIGHTS, or a random net saved once."""
    import os
    import tempfile

    from nightseg.models.relight import WEIGHTS_ENV, DCENet, save_dce_weights

    if os.environ.get(WEIGHTS_ENV):
        return os.environ[WEIGHTS_ENV]
    path = Path(tempfile.gettempdir()) / "bench_train_step_dce.safetensors"
    if not path.exists():
        save_dce_weights(DCENet(generator=torch.Generator().manual_seed(0)), path)
    return str(path)


def prepare_recipe(config: str, overrides: list[str], device: torch.device) -> tuple[dict, Callable[[int], float]]:
    """Return the recipe's description and a function ``step(i) -> seconds`` timing one training step."""
    from nightseg.core.config import load_config
    from nightseg.core.seeding import reseed
    from nightseg.engine import build_module, resolve_devices

    cfg = load_config(REPO / config if not Path(config).is_absolute() else config, overrides)
    relight = getattr(cfg.method, "relight", None)
    if relight is not None and relight.enabled and not relight.weights:
        relight.weights = relight_weights()
    reseed(0)
    module = build_module(cfg).to(device)
    module.log = lambda *args, **kwargs: None  # no Trainer attached: logging is a no-op here
    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    batch, images = make_batch(cfg, device)
    precision = resolve_devices(cfg)["precision"] if device.type == "cuda" else "32-true"
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    module.train()

    def step(i: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = module.training_step(batch, i)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    crop = cfg.data.source.crop
    info = {"recipe": cfg.recipe, "model": cfg.model.name, "crop": crop, "batch": cfg.data.batch_size,
            "images": images, "times": [], "precision": precision}
    return info, step


def time_recipe(config: str, overrides: list[str], steps: int, warmup: int, device: torch.device) -> dict:
    """Return the step times (s) of the recipe at `config` and its images per step."""
    info, step = prepare_recipe(config, overrides, device)
    times = [step(i) for i in range(warmup + steps)]
    info["times"] = times[warmup:]
    return info


def time_interleaved(configs: list[str], overrides: list[str], steps: int, warmup: int,
                     device: torch.device) -> list[dict]:
    """Return the step times of every recipe, timed round-robin (one step of each in turn), so that a
    changing machine load affects every recipe alike and the ratios stay comparable."""
    prepared = [prepare_recipe(c, overrides, device) for c in configs]
    for i in range(warmup + steps):
        for info, step in prepared:
            t = step(i)
            if i >= warmup:
                info["times"].append(t)
    return [info for info, _ in prepared]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS, help="recipes to time")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interleave", action="store_true",
                        help="time the recipes round-robin, one step each in turn (fair ratios on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    print(f"{'recipe':32s} {'model':12s} {'crop':>9s} {'imgs':>4s} {'median ms':>10s} {'min ms':>8s} {'img/s':>7s}")
    results = []
    if args.interleave:
        timed = time_interleaved(args.configs, args.set, args.steps, args.warmup, device)
    else:
        timed = (time_recipe(c, args.set, args.steps, args.warmup, device) for c in args.configs)
    for r in timed:
        med, low = statistics.median(r["times"]), min(r["times"])
        crop = "x".join(map(str, r["crop"])) if r["crop"] else "native"
        print(f"{r['recipe']:32s} {r['model']:12s} {crop:>9s} {r['images']:4d} {1000 * med:10.1f} "
              f"{1000 * low:8.1f} {r['images'] / med:7.1f}", flush=True)
        results.append((r["recipe"], med))
    if len(results) > 1:
        base_name, base = results[0]
        for name, med in results[1:]:
            print(f"{name}: {med / base:.2f}x the step time of {base_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

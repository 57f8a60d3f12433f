"""The GPU check: every paper-sized recipe trains, fits and predicts, in one prepared run (issue 23).

    .venv/bin/python bench/gpu_check.py --out gpu_check.json              # one GPU; ends within ~8 min (--budget-s)
    .venv/bin/python bench/gpu_check.py --device cpu --tiny --out t.json  # the same code paths, toy sizes (CPU)

1. Writes a few synthetic scenes (`nightseg.synthetic.generator.generate`) at the real datasets' sizes:
   Cityscapes-layout frames at 1024x2048, Dark Zurich day/night pairs at 1080x1920, NightCity-layout frames
   at 512x1024 (``--tiny``: 64x128 everywhere).
2. Trains every top-level recipe of ``src/nightseg/configs/*.yaml`` (a new recipe file is a new row) with
   `nightseg.engine.train` for ``--steps`` steps at the config's own crops, batch, workers and precision
   (``train.precision: auto``: bf16-mixed where supported); only the data roots, ``model.pretrained=false``
   (no download on the GPU machine), random Zero-DCE weights for ULCA(-ST), no validation and the step count are
   overridden. ``--tiny`` also swaps in the tiny models (``pspnet_tiny``, ``egnet_tiny``), 32-48 px crops and
   3 steps. NightLab's ``nightlab.yaml`` is Phi_R (the engine), plus its RDN and HDM stages
   (`nightseg.methods.nightlab.train_rdn`, fp32 as the pipeline runs them), and the day<->night CycleGAN
   (See Clearer at Night) runs `nightseg.pipelines.translation.training_step` at CycleGAN's widths.
   Per row: median seconds per step over the steps after the first quarter (data loading included: the
   time between consecutive step ends), images per second (every input image of a step), peak
   ``torch.cuda.max_memory_allocated`` (reset per row), first/last loss, finite and moving.
3. Times prediction of one 1024x2048 frame (`nightseg.inference.Predictor`, BatchNorm folded,
   channels_last) in fp32, bf16 and fp16 autocast, bf16 + ``torch.compile``, and onnxruntime (its CUDA
   provider on a GPU, where installed).

Prints a Markdown table; ``--out`` writes everything as JSON. A row that fails is reported with its error
and the script exits 1 after finishing the others; rows past ``--budget-s`` are skipped (so the run
always ends inside the machine's time). Memory estimates without a GPU: bench/gpu_memory_estimate.py.

One cohesive script of ~550 lines, over the usual ~500 on purpose: it is the single prepared file that is
run as one unit in a GPU machine's short lease, and its parts (data, engine rows, NightLab and CycleGAN
stages, prediction, table) share the row format and the time budget.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import itertools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch

from nightseg.core.config import Config, load_config
from nightseg.core.io import write_json
from nightseg.data import build_dataset
from nightseg.engine import resolve_devices, train
from nightseg.inference import Predictor
from nightseg.methods.nightlab import build_rdn, hdm_anchor_labels, train_rdn
from nightseg.models import build_segmenter
from nightseg.models.nightlab import boxes_from_label
from nightseg.models.relight import DCENet, save_dce_weights
from nightseg.models.translator import ImagePool
from nightseg.pipelines.recipes import CONFIG_DIR
from nightseg.pipelines.translation import CycleGAN, TranslatorSettings, training_step
from nightseg.synthetic.generator import generate

SIZES = {"full": {"city": (1024, 2048), "zurich": (1080, 1920), "nightcity": (512, 1024), "predict": (1024, 2048)},
         "tiny": {"city": (64, 128), "zurich": (72, 128), "nightcity": (64, 128), "predict": (64, 128)}}
SCENES = 4
"""Scenes per dataset: enough for a batch of distinct frames; crops and flips make every step differ."""
HARD_CLASSES = [5, 6, 7, 11, 12, 18]
"""NightLab's hard classes for the check (pole, traffic light/sign, person, rider, bicycle: small objects
that every synthetic scene has); the pipeline picks them by Phi_I's IoU."""
ROOTS = {"cityscapes": ("city", "cityscapes"), "dark_zurich": ("zurich", "dark_zurich"),
         "dark_zurich_pairs": ("zurich", "dark_zurich"), "nightcity": ("nightcity", "NightCity")}
TINY_MODELS = {"pspnet_r101": "pspnet_tiny", "nightseg.models.egnet:egnet_r101": "nightseg.models.egnet:egnet_tiny"}
IMAGE_KEYS = ("image", "night", "day")


FIRST = ("supervised_cityscapes", "ulca", "egnet", "nightlab", "translation", "daformer", "hrda", "mic", "dacs",
         "ulca_st", "supervised_nightcity")
"""Rows run first (the papers' main recipes), so that a run cut short by --budget-s loses ablations first."""


def recipe_order() -> list[Path]:
    """Return the top-level recipe files (``configs/*.yaml``, not ``configs/cpu/``) in run order, with the
    pseudo-path ``translation`` for the CycleGAN row (no config file)."""
    files = {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}
    files["translation"] = Path("translation")
    return [files[n] for n in FIRST if n in files] + [p for n, p in files.items() if n not in FIRST]


def make_data(root: Path, tiny: bool) -> dict[str, Path]:
    """Generate the check's scenes under `root`; return ``{"city"|"zurich"|"nightcity": folder}``."""
    sizes = SIZES["tiny" if tiny else "full"]
    zero = {"train": 0, "val": 0, "pairs": 0, "night_val": 0, "night_train": 0, "nightcity_val": 0}
    wanted = {"city": {"train": SCENES}, "zurich": {"pairs": SCENES}, "nightcity": {"night_train": SCENES}}
    out = {}
    for name, counts in wanted.items():
        out[name] = root / name
        generate(out[name], preset="tiny", size=sizes[name], counts={**zero, **counts}, workers=1 if tiny else 4,
                 progress=False)
    return out


def stream_folder(stream: Any, data: dict[str, Path]) -> Path:
    """Return the check's dataset folder for a stream, chosen by its ``root`` (``cityscapes``, ``dark_zurich``,
    ``nightcity``: every recipe names its datasets' usual folders), else by its dataset name."""
    for key in (str(stream.root or "").lower(), str(stream.options.get("base", "")).lower(),
                str(stream.options.get("dataset", "")).lower(), stream.dataset):
        if key in ROOTS:
            folder, sub = ROOTS[key]
            return data[folder] / sub
    raise ValueError(f"data stream {stream.dataset!r} (root {stream.root!r}): no synthetic folder for it; "
                     "add its root to ROOTS in bench/gpu_check.py")


def method_size_keys(params: Any, prefix: str = "method") -> list[str]:
    """Return the dotted names of the method's list-valued ``*crop`` / ``*stride`` keys (e.g. HRDA's detail
    crop), which a toy run must shrink with the crops."""
    out = []
    if dataclasses.is_dataclass(params):
        for f in dataclasses.fields(params):
            value = getattr(params, f.name)
            if dataclasses.is_dataclass(value):
                out += method_size_keys(value, f"{prefix}.{f.name}")
            elif isinstance(value, list) and f.name.endswith(("crop", "stride")):
                out.append(f"{prefix}.{f.name}")
    return out


def tiny_overrides(path: Path, cfg: Config) -> list[str]:
    """Return the toy-size overrides of `--tiny`: the model of the recipe's CPU variant (``configs/cpu/``,
    else `TINY_MODELS`), 32-48 px crops, 64x128 resizes, the CPU variant's dataset options, no workers."""
    cpu_path = CONFIG_DIR / "cpu" / path.name
    cpu = load_config(cpu_path) if cpu_path.is_file() else None
    model = cpu.model.name if cpu is not None else TINY_MODELS.get(cfg.model.name, cfg.model.name)
    out = [f"model.name={model}", "data.workers=0", "train.cpu_threads=1"]
    for name in ("source", "target"):
        s = getattr(cfg.data, name)
        if s.dataset is None:
            continue
        if s.crop is not None:
            out.append(f"data.{name}.crop={[48, 48] if s.dataset == 'dark_zurich_pairs' else [32, 32]}")
        if s.resize is not None:
            out.append(f"data.{name}.resize=[64,128]")
        cpu_stream = getattr(cpu.data, name) if cpu is not None else None
        if cpu_stream is not None and cpu_stream.dataset == s.dataset and cpu_stream.options and \
                s.dataset != "nightseg.methods.nightlab:hard_region_crops":
            out.append(f"data.{name}.options={json.dumps(cpu_stream.options)}")
    for key in method_size_keys(cfg.method):
        out.append(f"{key}=[16,16]")
    if cfg.method.name == "nightlab":
        out += ["data.source.options.size=[32,32]", "data.source.options.min_side=8",
                "data.source.options.min_area=4", "method.rdn.stages=1", "method.rdn.anchor_sizes=[8,16,32]",
                "method.rdn.min_area=4", "method.rdn.pre_nms=[200,100]", "method.rdn.post_nms=[50,10]"]
    if cfg.model.options.get("test_size"):
        out.append("model.options.test_size=null")
    return out


def recipe_overrides(path: Path, data: dict[str, Path], steps: int, tiny: bool, relight: Path) -> list[str]:
    """Return the overrides that point recipe `path` at the check's data (and, with `tiny`, toy sizes)."""
    cfg = load_config(path)
    out = [f"data.root={data['city'].parent}", "model.pretrained=false", f"train.max_steps={steps}",
           "train.val_every=0", f"train.state_every={steps}", "train.log_every=1", "train.progress=false",
           "data.val.dataset=null"]
    for name in ("source", "target"):
        stream = getattr(cfg.data, name)
        if stream.dataset is not None:
            out.append(f"data.{name}.root={stream_folder(stream, data)}")
    if hasattr(cfg.method, "relight"):  # ULCA and recipes built on it: random (fixed) Zero-DCE weights
        out.append(f"method.relight.weights={relight}")
    if hasattr(cfg.method, "init_checkpoint"):
        out.append("method.init_checkpoint=null")
    if cfg.method.name == "nightlab":
        out.append(f"data.source.options.hard_classes={HARD_CLASSES}")
    return out + (tiny_overrides(path, cfg) if tiny else [])


def batch_images(batch: Any) -> int:
    """Return the number of input images in a training batch ``{stream: {key: [B,3,H,W]}}``."""
    return sum(int(s[k].shape[0]) for s in batch.values() if isinstance(s, dict)
               for k in IMAGE_KEYS if isinstance(s.get(k), torch.Tensor) and s[k].dim() == 4)


class StepMeter(L.Callback):
    """Records the end time, loss and image count of every training step (synchronising CUDA first)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.images: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach().float()) if isinstance(loss, torch.Tensor) else float("nan"))
        self.images.append(batch_images(batch))


class FeatureDistanceOn(L.Callback):
    """Turns on DAFormer's feature distance (and its recipes': HRDA, MIC) with a copy of the untrained
    encoder: the recipes switch it off without ImageNet weights, which the check cannot download, and its
    frozen encoder and extra forward pass belong to the recipe's cost."""

    def __init__(self) -> None:
        self.enabled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        fd = getattr(pl_module.cfg.method, "feature_distance", None)
        if fd is not None and fd.enabled and getattr(pl_module, "imnet", False) is None:
            pl_module.enable_feature_distance(copy.deepcopy(pl_module.model.backbone))
            self.enabled = True


def summarise(name: str, ends: list[float], losses: list[float], images: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Return one table row from the step end times (s), losses and images per step; the first quarter of
    the intervals (cuDNN autotuning, worker start-up) is left out of the median."""
    intervals = [b - a for a, b in itertools.pairwise(ends)]
    timed = intervals[len(intervals) // 4:] or intervals
    sec = statistics.median(timed) if timed else float("nan")
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    return {"row": name, "status": "ok", "steps": len(losses), "s_per_step": sec,
            "images_per_step": images, "images_per_s": images / sec if sec and sec == sec else float("nan"),
            "peak_gb": peak_gb(), "peak_reserved_gb": peak_reserved_gb(), "loss_first": losses[0] if losses else float("nan"),
            "loss_last": losses[-1] if losses else float("nan"), "finite": finite,
            "moving": finite and len(set(round(v, 7) for v in losses)) > 1, **extra}


def peak_gb() -> float | None:
    """Return ``torch.cuda.max_memory_allocated`` in GiB since the last reset (None without CUDA)."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def peak_reserved_gb() -> float | None:
    """Return ``torch.cuda.max_memory_reserved`` in GiB (what the caching allocator took from the card,
    fragmentation included: the number to hold against a card's size; None without CUDA)."""
    return torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None


def reset_peak() -> None:
    """Free cached blocks and reset the peak-memory counter so that each row measures itself."""
    gc.collect()  # the previous row's models and optimiser states
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_engine(path: Path, overrides: list[str], run_dir: Path) -> tuple[dict[str, Any], Config]:
    """Train one recipe with the engine; return its row and the resolved config."""
    cfg = load_config(path, overrides)
    meter, fd = StepMeter(), FeatureDistanceOn()
    reset_peak()
    metrics = train(cfg, run_dir, callbacks=[meter, fd])
    crops = [getattr(cfg.data, s).crop for s in ("source", "target") if getattr(cfg.data, s).dataset]
    if cfg.method.name == "nightlab":
        crops = [cfg.data.source.options.get("size")]
    extra = {"model": cfg.model.name, "batch": cfg.data.batch_size, "crops": crops,
             "precision": resolve_devices(cfg)["precision"], "finished": bool(metrics.get("finished"))}
    if fd.enabled:
        extra["model"] += " + frozen encoder copy (feature distance)"
    row = summarise(cfg.recipe, meter.ends, meter.losses, max(meter.images, default=0), extra)
    return row, cfg


def nightcity_samples(folder: Path, hard: list[int], min_area: int, device: torch.device) -> list[tuple]:
    """Return ``[(image, label, hard-object boxes)]`` of the check's NightCity frames on `device`."""
    dataset = build_dataset("nightcity", folder, "train")
    out = []
    for i in range(len(dataset)):
        s = dataset[i]
        boxes = boxes_from_label(s["label"], hard, min_area)[0]
        out.append((s["image"].to(device), s["label"].to(device), boxes.to(device)))
    return out


def error_row(name: str, exc: BaseException) -> dict[str, Any]:
    """Return the row of a part that raised `exc` (the traceback goes to stderr)."""
    traceback.print_exc()
    return {"row": name, "status": f"error: {type(exc).__name__}: {exc}"}


def timed_rdn(name: str, rdn: torch.nn.Module, samples: list[tuple], steps: int, batch: int, lr: float, seed: int,
              flip: bool, labels: list[torch.Tensor] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Train the RDN with `train_rdn` for `steps` steps after a 2-step warm-up; return its row (s/step is
    the mean: `train_rdn` reports no per-step times)."""
    reset_peak()
    train_rdn(rdn, samples, 2, batch, lr, seed, flip, labels, desc=name)  # warm-up (cuDNN, allocator)
    start = time.perf_counter()
    losses = train_rdn(rdn, samples, steps, batch, lr, seed, flip, labels, desc=name)
    sync()
    mean = (time.perf_counter() - start) / steps
    return summarise(name, [start + mean * i for i in range(steps + 1)], losses, batch,
                     {"batch": batch, "crops": [list(samples[0][0].shape[-2:])], "precision": "32-true (pipeline)",
                      **extra})


def run_nightlab_stages(cfg: Config, folder: Path, steps: int, device: torch.device) -> list[dict[str, Any]]:
    """Time NightLab's RDN stage, the HDM labels (Phi_I vs Phi_R on every positive anchor's crop) and the HDM
    fine-tune on `device`; return their rows (each part fails alone). Phi_I and Phi_R are untrained
    segmenters of the recipe's model: only the cost is measured. Without HDM labels (that part failed) the
    fine-tune is timed on the RPN matching's labels, which have the same form."""
    p = cfg.method
    samples = nightcity_samples(folder, HARD_CLASSES, p.rdn.min_area, device)
    hdm_samples = samples[:2]  # every positive anchor is a Phi_R forward: two frames give the cost per frame
    rows = []
    rdn = build_rdn(p.rdn).to(device)
    try:
        rows.append(timed_rdn("nightlab RDN", rdn, samples, steps, p.rdn.batch_size, p.rdn.lr, cfg.seed, p.rdn.flip,
                              None, {"model": f"RDN (stages {p.rdn.stages})"}))
    except Exception as exc:
        rows.append(error_row("nightlab RDN", exc))
    opts = cfg.data.source.options
    size = [int(v) for v in opts.get("size", (64, 64))]
    try:
        reset_peak()
        image_model = build_segmenter(cfg.model.name, cfg.model.num_classes).to(device).eval()
        region = build_segmenter(cfg.model.name, cfg.model.num_classes).to(device).eval()
        started = time.perf_counter()
        labels = [hdm_anchor_labels(rdn, image_model, region, im, lab, boxes, size, float(opts.get("context", 2.0)),
                                    int(opts.get("min_side", 16)))[0] for im, lab, boxes in hdm_samples]
        sync()
        sec = (time.perf_counter() - started) / len(hdm_samples)
        rows.append({"row": "nightlab HDM labels", "status": "ok", "model": f"Phi_I + Phi_R ({cfg.model.name})",
                     "batch": 1, "crops": [size], "precision": "32-true (pipeline)", "steps": len(hdm_samples),
                     "s_per_step": sec, "images_per_step": 1, "images_per_s": 1 / sec, "peak_gb": peak_gb()})
    except Exception as exc:
        rows.append(error_row("nightlab HDM labels", exc))
        with torch.no_grad():
            labels = [rdn.match(rdn.anchors(im[None]), [boxes])[0][0].to(torch.int8) for im, _, boxes in hdm_samples]
    try:
        rows.append(timed_rdn("nightlab HDM", rdn, hdm_samples, steps, p.hdm.batch_size, p.hdm.lr, cfg.seed + 1, False,
                              labels, {"model": "RDN, HDM labels"}))
    except Exception as exc:
        rows.append(error_row("nightlab HDM", exc))
    return rows


def run_translation(data: dict[str, Path], steps: int, tiny: bool, device: torch.device) -> dict[str, Any]:
    """Time the CycleGAN step (See Clearer at Night) on Cityscapes day and Dark Zurich night frames."""
    from nightseg.pipelines.translation import load_training_image

    size = (32, 64) if tiny else (512, 1024)
    s = TranslatorSettings(steps=steps, size=size, channels=8 if tiny else 64, blocks=2 if tiny else 9,
                           disc_channels=8 if tiny else 64)
    day = sorted((data["city"] / "cityscapes" / "leftImg8bit").rglob("*.png"))
    night = sorted((data["zurich"] / "dark_zurich" / "rgb_anon" / "train" / "night").rglob("*.png"))
    reset_peak()
    nets = CycleGAN(s).to(device).train()
    opt_g = torch.optim.Adam(nets.generator_params(), lr=s.lr, betas=(s.beta1, 0.999))
    opt_d = torch.optim.Adam(nets.discriminator_params(), lr=s.lr, betas=(s.beta1, 0.999))
    pools = {"day": ImagePool(s.pool_size), "night": ImagePool(s.pool_size)}
    ends, losses = [time.perf_counter()], []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        a = load_training_image(day[step % len(day)], size, step % 2 == 1)[None].to(device)
        b = load_training_image(night[step % len(night)], size, step % 2 == 0)[None].to(device)
        parts = training_step(nets, a, b, opt_g, opt_d, pools, s, g)
        sync()
        ends.append(time.perf_counter())
        losses.append(parts["G_adv"] + parts["cycle"] + parts["identity"])
    return summarise("translation (CycleGAN)", ends, losses, 2,
                     {"model": f"CycleGAN {s.channels}ch/{s.blocks} blocks", "batch": 1, "crops": [list(size)],
                      "precision": "32-true (pipeline)"})


def sync() -> None:
    """Wait for queued CUDA work (no-op on the CPU), so that wall-clock times are the work's."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_predict(predictor: Predictor, x: torch.Tensor, dtype: torch.dtype | None, repeats: int,
                 warmup: int) -> dict[str, Any]:
    """Return seconds per frame and frames/s of `predictor` (forward + argmax) on the preloaded batch `x`."""
    reset_peak()
    times = []
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            predictor.logits(x).argmax(1).to(torch.uint8)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    return {"status": "ok", "s_per_image": sec / x.shape[0], "images_per_s": x.shape[0] / sec, "peak_gb": peak_gb()}


def predict_rows(checkpoint: Path, tiny: bool, device: torch.device, compile_ok: bool) -> list[dict[str, Any]]:
    """Time the prediction variants on one frame of the check's predict size; return their rows."""
    h, w = SIZES["tiny" if tiny else "full"]["predict"]
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    repeats, warmup = (3, 1) if tiny else (10, 3)
    half = [("bf16 autocast", torch.bfloat16), ("fp16 autocast", torch.float16)]
    variants: list[tuple[str, str, torch.dtype | None, bool]] = [("torch fp32", "torch", None, False)]
    variants += [(f"torch {n}", "torch", d, False) for n, d in half if device.type == "cuda" or d == torch.bfloat16]
    variants += [("torch bf16 autocast + torch.compile", "torch", torch.bfloat16, True), ("onnxruntime", "onnx", None, False)]
    rows = []
    for name, backend, dtype, compiled in variants:
        row: dict[str, Any] = {"row": name, "size": [h, w]}
        try:
            if compiled and not compile_ok:
                row["status"] = "skipped (torch.compile on the GPU only, or --no-compile / time budget)"
            elif backend == "onnx" and device.type == "cuda" and not onnx_cuda():
                row["status"] = "skipped (onnxruntime has no CUDAExecutionProvider here: pip install onnxruntime-gpu)"
            else:
                predictor = Predictor.from_checkpoint(checkpoint, device=device, backend=backend)
                if backend == "onnx":
                    row["providers"] = list(predictor.net.session.get_providers())
                if compiled:
                    predictor.net = torch.compile(predictor.net)
                row.update(time_predict(predictor, x, dtype, repeats, 5 if compiled else warmup))
        except ImportError as exc:
            row["status"] = f"skipped ({exc})"
        except Exception as exc:  # one broken variant must not hide the others' numbers
            row["status"] = f"error: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
    return rows


def onnx_cuda() -> bool:
    """Return whether onnxruntime is installed with its CUDA provider."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def machine() -> dict[str, Any]:
    """Return the machine and software versions the numbers were measured with."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
            "cpu": platform.processor() or platform.machine(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


def fmt(v: Any, digits: int = 3) -> str:
    """Format a table cell."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.{digits}f}"
    return str(v)


def table(result: dict[str, Any]) -> str:
    """Return the Markdown tables (training, then prediction) of a check `result`."""
    lines = ["| recipe | model | batch | crops | precision | steps | s/step | images/s | peak GiB (reserved) "
             "| loss first -> last | finite | moving | status |", "|" + "---|" * 13]
    for r in result["train"]:
        crops = ", ".join("x".join(map(str, c)) for c in r.get("crops") or [] if c)
        lines.append(f"| {r['row']} | {r.get('model', '')} | {r.get('batch', '')} | {crops} | {r.get('precision', '')} "
                     f"| {r.get('steps', '')} | {fmt(r.get('s_per_step'))} | {fmt(r.get('images_per_s'), 1)} "
                     f"| {fmt(r.get('peak_gb'), 2)} ({fmt(r.get('peak_reserved_gb'), 2)}) "
                     f"| {fmt(r.get('loss_first'))} -> {fmt(r.get('loss_last'))} "
                     f"| {r.get('finite', '')} | {r.get('moving', '')} | {r['status']} |")
    lines += ["", "| predict, one frame | size | s/image | images/s | peak GB | status |", "|---|---|---|---|---|---|"]
    for r in result["predict"]:
        name = r["row"] + (f" ({', '.join(r['providers'])})" if r.get("providers") else "")
        lines.append(f"| {name} | {'x'.join(map(str, r['size']))} | {fmt(r.get('s_per_image'), 4)} "
                     f"| {fmt(r.get('images_per_s'), 1)} | {fmt(r.get('peak_gb'), 2)} | {r['status']} |")
    return "\n".join(lines)


def run_check(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the whole check in the scratch folder `work`; return ``{"machine", "train", "predict", ...}``."""
    started = time.perf_counter()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    steps = args.steps or (3 if args.tiny else 24)
    over_budget = lambda: time.perf_counter() - started > args.budget_s  # noqa: E731
    data = make_data(work / "data", args.tiny)
    relight = save_dce_weights(DCENet(generator=torch.Generator().manual_seed(0)), work / "dce.safetensors")
    # one process on one device: devices=auto would start DDP on a multi-GPU machine (docs/scaling.md)
    accel = [f"train.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", "train.devices=1"]
    rows: list[dict[str, Any]] = []
    result = {"machine": machine(), "device": str(device), "tiny": args.tiny, "steps": steps,
              "memory_cap_gib": args.memory_cap_gib, "train": rows,
              "predict": [], "seconds": None}

    def keep(*new: dict[str, Any]) -> None:
        """Add rows, print them, and rewrite --out, so that a run killed by its time limit leaves its rows."""
        for row in new:
            rows.append(row)
            print(f"[{time.perf_counter() - started:6.1f} s] {json.dumps(row)}", file=sys.stderr, flush=True)
        if args.out:
            write_json(args.out, {**result, "seconds": time.perf_counter() - started})

    checkpoint = None
    for path in recipe_order():
        if args.only and path.stem not in args.only:
            continue
        if over_budget():
            keep({"row": path.stem, "status": f"skipped (past --budget-s {args.budget_s:.0f})"})
            continue
        if path.stem == "translation":
            try:
                keep(run_translation(data, steps, args.tiny, device))
            except Exception as exc:
                keep(error_row("translation (CycleGAN)", exc))
            continue
        try:
            row, cfg = run_engine(path, [*recipe_overrides(path, data, steps, args.tiny, relight), *accel, *args.set],
                                  work / "runs" / path.stem)
            keep(row)
            if path.stem == "supervised_cityscapes":
                checkpoint = work / "runs" / path.stem / "checkpoints" / "last.safetensors"
            if cfg.method.name == "nightlab":
                keep(*run_nightlab_stages(cfg, data["nightcity"] / "NightCity", steps, device))
        except Exception as exc:
            keep(error_row(path.stem, exc))
    if checkpoint is not None and checkpoint.is_file():
        left = args.budget_s - (time.perf_counter() - started)
        result["predict"] = predict_rows(checkpoint, args.tiny, device, device.type == "cuda" and args.compile and left > 150)
    result["seconds"] = time.perf_counter() - started
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy sizes and tiny models: the CPU dry run")
    parser.add_argument("--steps", type=int, default=None, help="training steps per recipe (default 24; --tiny 3)")
    parser.add_argument("--only", nargs="*", default=None, help="recipe stems to run (and/or 'translation')")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip what would start after this many s")
    parser.add_argument("--memory-cap-gib", type=float, default=None, metavar="G",
                        help="let PyTorch use at most G GiB of the GPU (a smaller card: 22.4 for 24 GB); a row "
                             "that does not fit ends in OutOfMemoryError")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile row")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the check, print the table, write --out; return 1 if any row failed."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available on this machine; use --device cpu --tiny", file=sys.stderr)
        return 2
    if args.memory_cap_gib is not None:
        if not torch.cuda.is_available() or args.device == "cpu":
            print("--memory-cap-gib: needs a GPU (it caps PyTorch's CUDA allocator); leave it out on the CPU",
                  file=sys.stderr)
            return 2
        total = torch.cuda.get_device_properties(0).total_memory
        # the caching allocator raises OutOfMemoryError past this share, as the smaller card would
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
    with tempfile.TemporaryDirectory(prefix="nightseg-gpu-check-") as tmp:
        result = run_check(args, args.work or Path(tmp))
    print(json.dumps(result["machine"]))
    print(table(result))
    if args.out:
        write_json(args.out, result)
    failed = [r["row"] for r in [*result["train"], *result["predict"]] if str(r["status"]).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

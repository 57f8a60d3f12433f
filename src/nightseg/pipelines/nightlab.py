"""NightLab (Deng et al.), the staged pipeline: `run_nightlab(config, overrides, out)`.

CLI: ``nightseg nightlab --config FILE --out DIR key=value...``; the recipe pieces (Phi_R training, RDN and
HDM training, hard-class selection) live in `nightseg.methods.nightlab`.

It runs the stages below into ``out``; each stage is skipped when its output exists, so rerunning the same
command resumes (an interrupted Phi_I / Phi_R / RDN / HDM training continues from its saved state; the RDN
and HDM keep theirs in ``rdn.state/`` / ``hdm.state/`` until their output is written):

1. ``image/``: Phi_I, any segmenter trained with any recipe (``method.image_config``, by default the
   supervised night recipe), or a given checkpoint (``method.image_checkpoint``);
2. ``hard.json``: the **hard classes**: classes with ground truth in ``method.hard_split`` of
   ``method.hard_dataset`` (NightCity val) whose IoU under Phi_I is below ``method.hard_threshold``
   (seed Sec. D / Table 1; ``method.hard_classes`` skips the selection);
3. ``region/``: Phi_R, trained by *this* recipe with the engine on crops around hard-class objects
   upsampled to a higher resolution (`HardRegionCrops`, ``data.source.options``), started from Phi_I's
   weights (``method.init_checkpoint``, filled in by the pipeline);
4. ``rdn.safetensors``: the RDN (`nightseg.models.nightlab.RDN`) trained on the boxes of hard-class
   objects derived from the training label maps;
5. ``hdm_labels.safetensors``: the HDM anchor labels (seed Eq. 1) on the HDM split: by default
   (``method.hdm.split: train_holdout``) a seeded ``method.hdm.holdout`` share of the training images of
   ``data.source``, which stages 1, 3 and 4 then leave out of Phi_I's, Phi_R's and the RDN's training data;
   or a split of ``method.hdm.dataset`` (null: the hard-class split, NightCity val; a warning says when it
   is a ``val`` split, which a paper may also score on): every anchor the RPN matching makes positive is
   cropped, segmented by Phi_I and Phi_R, and stays positive only where Phi_R's IoU is higher;
6. ``hdm.safetensors``: the RDN fine-tuned on the same split with those labels as classification targets
   (seed Eq. 2). Stages 5-6 refuse outputs made on another split (delete them or use a new ``out``);
7. ``nightlab.safetensors`` (Phi_I + Phi_R + HDM-trained RDN + merge) and ``nightlab_rdn.safetensors``
   (the ablation without HDM), both loadable by ``Predictor.from_checkpoint`` / ``nightseg predict``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from nightseg.core.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.core.classes import CLASS_NAMES
from nightseg.core.config import load_config
from nightseg.core.errors import TrainingInterrupted, UserError
from nightseg.core.io import write_json
from nightseg.data import build_dataset
from nightseg.engine import RunDir, train
from nightseg.methods.nightlab import (
    TRAIN_HOLDOUT,
    Params,
    build_rdn,
    hdm_anchor_labels,
    holdout_indices,
    init_rdn_from,
    select_hard_classes,
    train_rdn,
    training_indices,
)
from nightseg.models.nightlab import RDN, NightLab, boxes_from_label
from nightseg.models.registry import model_from_config
from nightseg.pipelines.recipes import CONFIG_DIR, score_checkpoint, train_recipe

log = logging.getLogger("nightseg.nightlab")


def _load_samples(dataset_name: str, root: Path, split: str, hard: list[int], min_area: int,
                  holdout: tuple[float, int, bool] | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Return ``[(image [3,H,W] in [0,1], label [H,W], boxes [N,4])]`` of a labelled split; with `holdout`
    ``(fraction, seed, held)`` only its held-out images (``held``) or only the others."""
    dataset = build_dataset(dataset_name, root, split)
    indices: list[int] = list(range(len(dataset)))
    if holdout is not None:
        fraction, holdout_seed, held = holdout
        pick = holdout_indices if held else training_indices
        indices = pick(len(dataset), fraction, holdout_seed)
    out = []
    for i in tqdm(indices, desc=f"load {split}", unit="img", disable=None, leave=False):
        sample = dataset[i]
        out.append((sample["image"], sample["label"], boxes_from_label(sample["label"], hard, min_area)[0]))
    return out


def _load_model(path: Path) -> nn.Module:
    tensors, meta = load_checkpoint(path)
    model = model_from_config(dict(meta["model"]), path)
    load_state_into(model, tensors, path)
    return model.eval()


def _save_rdn(rdn: RDN, path: Path, extra: dict[str, Any]) -> None:
    save_checkpoint(path, rdn.state_dict(), {"model": {"name": "nightlab_rdn", **rdn.config}, **extra})


def _load_rdn(path: Path) -> RDN:
    tensors, meta = load_checkpoint(path)
    config = {k: v for k, v in meta["model"].items() if k != "name"}
    rdn = RDN(**config)
    load_state_into(rdn, tensors, path)
    return rdn.eval()


def _image_holdout_overrides(image_config: Path, overrides: list[str], base: str, root: str | None, split: str,
                             holdout: tuple[float, int]) -> list[str]:
    """Return the overrides that take the HDM's held-out images out of Phi_I's training stream (its dataset
    wrapped in `without_holdout`); UserError when Phi_I's recipe trains on another dataset, root or split."""
    stream = load_config(image_config, overrides).data.source
    if (stream.dataset, stream.root, stream.split) != (base, root, split):
        raise UserError(f"{image_config}: Phi_I trains on {stream.dataset} {stream.root} {stream.split}, not on "
                        f"{base} {root} {split} whose images method.hdm.split=train_holdout holds out; give "
                        "method.image_checkpoint or set method.hdm.split to a split of method.hdm.dataset")
    return ["data.source.dataset=nightseg.methods.nightlab:without_holdout", f"data.source.options.base={base}",
            f"data.source.options.holdout={holdout[0]}", f"data.source.options.holdout_seed={holdout[1]}"]


def _check_hdm_split(path: Path, split: str) -> None:
    """Raise a UserError if the stage output `path` was made on another HDM split than `split`."""
    meta_path = path.with_suffix(".json")
    made = json.loads(meta_path.read_text()).get("hdm_split") if meta_path.is_file() else None
    if made is not None and made != split:
        raise UserError(f"{path}: made on the HDM split {made!r}, not method.hdm.split {split!r}; delete it "
                        "(and hdm_labels/hdm/nightlab*.safetensors) or use a new --out")


# --------------------------------------------------------------------------------------------- pipeline
def run_nightlab(config: str | Path, overrides: list[str] | tuple[str, ...] = (), out: str | Path = "nightlab"
                 ) -> dict[str, Any]:
    """Run (or resume) the NightLab stages of the module docstring into `out`; return a summary dict
    with the hard classes, HDM label counts and the paths of ``nightlab.safetensors`` and
    ``nightlab_rdn.safetensors``."""

    config, out = Path(config), Path(out)
    cfg = load_config(config, overrides)
    p: Params = cfg.method
    if p.name != "nightlab":
        raise UserError(f"{config}: method.name is {p.name!r}; `nightseg nightlab` needs a NightLab recipe")
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(cfg.data.root)
    threads = cfg.train.cpu_threads
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    seed = cfg.seed
    common = [f"data.workers={cfg.data.workers}", f"train.progress={str(cfg.train.progress).lower()}"]
    if threads:
        common.append(f"train.cpu_threads={threads}")
    source, options = cfg.data.source, cfg.data.source.options
    base = str(options.get("base", "nightcity"))
    # the HDM's held-out training images (default): Phi_I, Phi_R and the RDN train without them
    held_out = p.hdm.enabled and p.hdm.split == TRAIN_HOLDOUT
    holdout = (float(p.hdm.holdout), int(p.hdm.holdout_seed)) if held_out else None
    try:
        # 1. Phi_I
        if p.image_checkpoint:
            image_ckpt = Path(p.image_checkpoint).expanduser()
            if holdout:
                log.warning("method.image_checkpoint: make sure this Phi_I did not train on the HDM's held-out "
                            "images (method.hdm.holdout=%s, holdout_seed=%d of %s %s)", holdout[0], holdout[1],
                            base, source.split)
        else:
            log.info("[1/7] Phi_I: %s, %d steps", p.image_config, p.image_steps)
            image_extra = [*common, *p.image_overrides]
            if holdout:
                image_extra += _image_holdout_overrides(CONFIG_DIR / p.image_config, image_extra, base, source.root,
                                                        source.split, holdout)
            image_ckpt = train_recipe(CONFIG_DIR / p.image_config, data_root, out / "image", p.image_steps, seed,
                                      image_extra)
        # 2. hard classes
        hard_file = out / "hard.json"
        if not hard_file.is_file():
            log.info("[2/7] hard classes: Phi_I IoU < %.2f on %s %s", p.hard_threshold, p.hard_dataset, p.hard_split)
            scores = score_checkpoint(image_ckpt, p.hard_dataset, data_root / p.hard_root, p.hard_split)
            per_class = scores["per_class"]
            hard = list(p.hard_classes) if p.hard_classes is not None else select_hard_classes(per_class, p.hard_threshold)
            write_json(hard_file, {"threshold": p.hard_threshold, "hard_classes": hard,
                                   "hard_names": [CLASS_NAMES[c] for c in hard], "image_mIoU": scores["mIoU"],
                                   "image_iou": {k: v["iou"] for k, v in per_class.items()}})
        hard = json.loads(hard_file.read_text())["hard_classes"]
        log.info("hard classes: %s", ", ".join(CLASS_NAMES[c] for c in hard) or "none")
        image_tensors, _ = load_checkpoint(image_ckpt)
        image_model = _load_model(image_ckpt)
        region_size = [int(s) for s in options.get("size", (64, 64))]
        context, min_side = float(options.get("context", 2.0)), int(options.get("min_side", 16))
        merge_kw = {"region_size": region_size, "context": context, "min_side": min_side,
                    "max_proposals": p.merge.max_proposals, "score_thresh": p.merge.score_thresh}
        meta = {"recipe": cfg.recipe, "method": "nightlab", "hard_classes": hard, "config": cfg.to_dict(),
                "image_checkpoint": str(image_ckpt)}
        summary: dict[str, Any] = {"hard_classes": hard, "image_checkpoint": str(image_ckpt)}
        if not hard:  # nothing is hard: NightLab is Phi_I (nothing is ever replaced)
            log.warning("no hard class below %.2f: NightLab = Phi_I", p.hard_threshold)
            for name in ("nightlab", "nightlab_rdn"):
                net = NightLab(image_model, _load_model(image_ckpt), build_rdn(p.rdn), [], **merge_kw)
                summary[name] = str(save_checkpoint(out / f"{name}.safetensors", net.state_dict(),
                                                    {"model": net.config, **meta}))
            write_json(out / "summary.json", summary)
            return summary
        # 3. Phi_R
        region_dir = out / "region"
        if not RunDir(region_dir).finished():
            log.info("[3/7] Phi_R on hard-region crops %s", region_size)
            extra = [f"data.source.options.hard_classes={hard}"]
            if holdout:
                extra += [f"data.source.options.holdout={holdout[0]}", f"data.source.options.holdout_seed={holdout[1]}"]
            if p.init_checkpoint is None:
                extra.append(f"method.init_checkpoint={image_ckpt}")
            region_cfg = load_config(config, [*overrides, *extra])
            metrics = train(region_cfg, region_dir, resume=True)
            if not metrics.get("finished"):
                raise TrainingInterrupted(f"{region_dir}: Phi_R training stopped at step {metrics.get('step')}; "
                                          "rerun the same command to continue")
        region_model = _load_model(RunDir(region_dir).last)
        # 4. RDN
        rdn_path = out / "rdn.safetensors"
        if not rdn_path.is_file():
            log.info("[4/7] RDN on hard-object boxes of %s %s", base, source.split)
            samples = _load_samples(base, data_root / (source.root or ""), source.split, hard, p.rdn.min_area,
                                    (*holdout, False) if holdout else None)
            rdn = build_rdn(p.rdn)
            if p.rdn.init_from_image:
                log.info("RDN backbone: %d tensors from Phi_I", init_rdn_from(rdn, image_tensors))
            losses = train_rdn(rdn, samples, p.rdn.steps, p.rdn.batch_size, p.rdn.lr, seed, p.rdn.flip,
                               state_dir=out / "rdn.state")
            _save_rdn(rdn, rdn_path, {"final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
                                      "boxes": sum(len(s[2]) for s in samples)})
            shutil.rmtree(out / "rdn.state", ignore_errors=True)  # the stage's output exists: state no longer needed
        rdn = _load_rdn(rdn_path)
        # 5. HDM labels, 6. HDM
        hdm_path = out / "hdm.safetensors"
        labels_path = out / "hdm_labels.safetensors"
        if holdout:
            hdm_dataset, hdm_root, hdm_split = base, source.root or "", source.split
            hdm_where = f"{hdm_dataset} {hdm_root} {hdm_split} holdout {holdout[0]} seed {holdout[1]}"
        else:
            hdm_dataset = p.hdm.dataset or p.hard_dataset
            hdm_root = p.hdm.root or p.hard_root
            hdm_split = p.hdm.split or p.hard_split
            hdm_where = f"{hdm_dataset} {hdm_root} {hdm_split}"
        if p.hdm.enabled:
            for path in (labels_path, hdm_path):
                _check_hdm_split(path, hdm_where)
            if hdm_split == "val" and not holdout:
                log.warning("HDM labels and fine-tuning on %s %s: do not report NightLab scores on this split "
                            "(the HDM has seen its labels); set method.hdm.split to a held-out split",
                            hdm_dataset, hdm_split)
        if p.hdm.enabled and not hdm_path.is_file():
            samples = _load_samples(hdm_dataset, data_root / hdm_root, hdm_split, hard, p.rdn.min_area,
                                    (*holdout, True) if holdout else None)
            if not labels_path.is_file():
                log.info("[5/7] HDM labels on %s", hdm_where)
                labels, counts = [], {"positive": 0, "kept": 0}
                for image, label, boxes in tqdm(samples, desc="HDM labels", unit="img", disable=None):
                    lab, c = hdm_anchor_labels(rdn, image_model, region_model, image, label, boxes, region_size,
                                               context, min_side)
                    labels.append(lab)
                    counts = {k: counts[k] + c[k] for k in counts}
                save_checkpoint(labels_path, {"labels": torch.stack(labels)}, {"model": {"name": "nightlab_hdm_labels"},
                                                                              "hdm_split": hdm_where, **counts})
            tensors, label_meta = load_checkpoint(labels_path)
            log.info("[6/7] HDM: %d of %d positive anchors kept", label_meta["kept"], label_meta["positive"])
            hdm = _load_rdn(rdn_path)
            anchor_labels = list(tensors["labels"].long())
            losses = train_rdn(hdm, samples, p.hdm.steps, p.hdm.batch_size, p.hdm.lr, seed + 1, False, anchor_labels,
                               desc="HDM", state_dir=out / "hdm.state")
            _save_rdn(hdm, hdm_path, {"positive": label_meta["positive"], "kept": label_meta["kept"],
                                      "hdm_split": hdm_where,
                                      "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))})
            shutil.rmtree(out / "hdm.state", ignore_errors=True)
        # 7. export
        log.info("[7/7] export")
        variants = {"nightlab_rdn": rdn_path}
        if p.hdm.enabled:
            variants["nightlab"] = hdm_path
            summary["hdm"] = {k: json.loads(hdm_path.with_suffix(".json").read_text()).get(k)
                              for k in ("positive", "kept", "hdm_split")}
        for name, detector in variants.items():
            net = NightLab(image_model, region_model, _load_rdn(detector), hard, **merge_kw)
            summary[name] = str(save_checkpoint(out / f"{name}.safetensors", net.state_dict(),
                                                {"model": net.config, **meta, "detector": detector.name}))
        write_json(out / "summary.json", summary)
        return summary
    finally:
        torch.set_num_threads(previous_threads)

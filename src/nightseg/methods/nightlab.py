"""NightLab (Deng et al.): the recipe that trains the region-level model Phi_R, and the RDN / HDM training
and hard-class selection that `nightseg.pipelines.nightlab.run_nightlab` runs in stages (see there).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from tqdm import tqdm

from nightseg.core.classes import CLASS_NAMES
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.core.loop_state import load_loop_state, save_loop_state, state_step
from nightseg.core.schedule import poly_factor
from nightseg.methods.supervised import Supervised
from nightseg.models.nightlab import (
    RDN,
    boxes_from_label,
    context_box,
    crop_regions,
    hdm_relabel,
    pixel_box,
    proposal_iou,
)

log = logging.getLogger("nightseg.nightlab")

TRAIN_HOLDOUT = "train_holdout"
"""``method.hdm.split`` value: the HDM works on a held-out part of the training split (`holdout_indices`)."""


# --------------------------------------------------------------------------------------------- params
@dataclass
class RDNParams:
    """The region detection network (anchor-based RPN) and its training."""

    stages: int = 2
    """ResNet-18 stages of the RPN backbone (2: 128 channels at stride 8)."""
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    fg_iou: float = 0.5
    bg_iou: float = 0.3
    batch_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms: list[int] = field(default_factory=lambda: [2000, 1000])
    """Proposals kept before NMS in training / testing."""
    post_nms: list[int] = field(default_factory=lambda: [300, 50])
    nms: float = 0.7
    min_area: int = 16
    """Connected components under this many pixels give no box."""
    init_from_image: bool = True
    """Start the backbone from Phi_I's encoder where the tensors fit (a ResNet-18 Phi_I)."""
    steps: int = 5000
    batch_size: int = 4
    lr: float = 0.01
    flip: bool = True


@dataclass
class HDMParams:
    """The hardness detection module: relabelled anchors (Eq. 1) and the RDN fine-tuned on them (Eq. 2)."""

    enabled: bool = True
    split: str | None = TRAIN_HOLDOUT
    """``train_holdout`` (default): a seeded ``holdout`` share of the training images of ``data.source``
    (its ``options.base`` dataset, root and split), which Phi_I, Phi_R and the RDN then do not train on.
    Any other value is a split of ``dataset``/``root`` (null: ``method.hard_split``, NightCity val, the split
    the seed reports scores on: scores there are then optimistic, and a warning says so)."""
    holdout: float = 0.2
    """Share of the training images held out for the HDM (``split: train_holdout``)."""
    holdout_seed: int = 0
    """Seed of the held-out selection (independent of the run's seed, so all seeds use one split)."""
    dataset: str | None = None
    """Dataset of the HDM labels and fine-tuning when ``split`` is not ``train_holdout`` (null:
    ``method.hard_dataset``)."""
    root: str | None = None
    """Its folder under ``data.root`` (null: ``method.hard_root``)."""
    steps: int = 2000
    batch_size: int = 4
    lr: float = 0.005


@dataclass
class MergeParams:
    """Which proposals are merged at inference (seed Sec. B)."""

    max_proposals: int = 8
    score_thresh: float = 0.5
    """Minimum objectness probability of a proposal."""


@dataclass
class Params:
    """Keys of the ``method:`` section of a NightLab recipe (see the module docstring for the stages)."""

    name: str = "nightlab"
    image_checkpoint: str | None = None
    """Phi_I: a trained NightSeg checkpoint; ``null``: train ``image_config`` for ``image_steps``."""
    image_config: str = "supervised_nightcity.yaml"
    """Recipe of Phi_I (relative to the packaged configs folder, or a path)."""
    image_steps: int = 50000
    image_overrides: list[str] = field(default_factory=list)
    hard_threshold: float = 0.5
    hard_classes: list[int] | None = None
    """Fixed hard classes (trainIds); ``null``: select them by ``hard_threshold``."""
    hard_dataset: str = "nightcity"
    hard_root: str = "nightcity"
    hard_split: str = "val"
    """Split on which the hard classes are selected and the HDM labels computed."""
    init_checkpoint: str | None = None
    """Phi_R's initial weights (the pipeline sets Phi_I's checkpoint here; ``null``: from scratch)."""
    class_weights: list[float] | str | None = None
    target_weight: float = 1.0
    rdn: RDNParams = field(default_factory=RDNParams)
    hdm: HDMParams = field(default_factory=HDMParams)
    merge: MergeParams = field(default_factory=MergeParams)


# --------------------------------------------------------------------------------------------- Phi_R data
class HardRegionCrops(Dataset):
    """Crops around the hard-class objects of a labelled dataset, resized to ``size`` (Phi_R's input).

    One entry per object (connected component of a hard class, `boxes_from_label`); the crop is
    `context_box` of the object's box, jittered by up to ``jitter`` (centre shift and side scale, relative
    to the box), so Phi_R sees the object at ``size / crop side`` times its resolution in the image.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Any = None, *, base: str = "nightcity",
                 hard_classes: list[int] | None = None, size: list[int] | tuple[int, int] = (64, 64),
                 context: float = 2.0, min_side: int = 16, min_area: int = 4, jitter: float = 0.25,
                 holdout: float = 0.0, holdout_seed: int = 0) -> None:
        from nightseg.data import build_dataset

        if not hard_classes:
            raise UserError("data.source.options.hard_classes: HardRegionCrops needs the hard classes (trainIds); "
                            "the NightLab pipeline fills them in")
        self.base = build_dataset(base, Path(root), split)
        self.transform = transform
        self.size = [int(s) for s in size]
        self.context, self.min_side, self.jitter = float(context), int(min_side), float(jitter)
        self.entries: list[tuple[int, list[float]]] = []
        # the HDM's held-out images (holdout > 0) give no crop: Phi_R must not train on them
        images = training_indices(len(self.base), holdout, holdout_seed)
        for index in tqdm(images, desc="hard regions", unit="img", disable=None, leave=False):
            label = self.base.load(index)["label"].as_subclass(torch.Tensor)
            boxes, _ = boxes_from_label(label.reshape(label.shape[-2:]), hard_classes, min_area)
            self.entries.extend((index, box) for box in boxes.tolist())
        if not self.entries:
            raise UserError(f"{root} ({split}): no object of the hard classes {hard_classes} with at least "
                            f"{min_area} pixels; nothing to train Phi_R on")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from nightseg.data.common import to_contract

        image_index, (x1, y1, x2, y2) = self.entries[index]
        sample = self.base.load(image_index)
        image = sample["image"].as_subclass(torch.Tensor)
        label = sample["label"].as_subclass(torch.Tensor).reshape(image.shape[-2:])
        w, h = x2 - x1, y2 - y1
        shift = (torch.rand(2) * 2 - 1) * self.jitter
        scale = math.exp(float(torch.rand(()) * 2 - 1) * math.log1p(self.jitter))
        box = [x1 + shift[0] * w, y1 + shift[1] * h, x2 + shift[0] * w, y2 + shift[1] * h]
        cx1, cy1, cx2, cy2 = context_box(box, self.context * scale, self.min_side, tuple(image.shape[-2:]))
        crop = image[None, :, cy1:cy2, cx1:cx2].float()
        crop = F.interpolate(crop, size=self.size, mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(label[None, None, cy1:cy2, cx1:cx2].float(), size=self.size, mode="nearest")[0, 0]
        out = {"image": tv_tensors.Image(crop.round().clamp(0, 255).to(torch.uint8)),
               "label": tv_tensors.Mask(lab.to(torch.uint8)), "name": f"{sample['name']}_r{index}"}
        if self.transform is not None:
            out = self.transform(out)
        return to_contract(out)


def hard_region_crops(root: str | Path, split: str = "train", transform: Any = None, **options: Any) -> HardRegionCrops:
    """Return the `HardRegionCrops` dataset (the ``module:factory`` form for ``data.source.dataset``)."""
    return HardRegionCrops(root, split, transform, **options)


def holdout_indices(n: int, fraction: float, seed: int = 0) -> list[int]:
    """Return the sorted indices of the ``round(fraction * n)`` images (at least 1 when fraction > 0) held out
    for the HDM: the first ones of a permutation of range(n) seeded by `seed`, the same on every machine."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"method.hdm.holdout={fraction}: must be in [0, 1)")
    if fraction == 0.0 or n == 0:
        return []
    count = min(n - 1, max(1, round(fraction * n)))
    if count < 1:
        raise UserError(f"method.hdm.holdout={fraction}: a split of {n} image(s) leaves nothing to train on")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return sorted(perm[:count].tolist())


def training_indices(n: int, fraction: float, seed: int = 0) -> list[int]:
    """Return the sorted indices of range(n) that `holdout_indices` does not hold out."""
    held = set(holdout_indices(n, fraction, seed))
    return [i for i in range(n) if i not in held]


def without_holdout(root: str | Path, split: str = "train", transform: Any = None, *, base: str = "nightcity",
                    holdout: float = 0.2, holdout_seed: int = 0, **options: Any) -> Dataset:
    """Return dataset `base` (`nightseg.data.build_dataset`) without the HDM's held-out images: the
    ``module:factory`` the pipeline puts in Phi_I's training stream when ``method.hdm.split`` is
    ``train_holdout``."""
    from torch.utils.data import Subset

    from nightseg.data import build_dataset

    dataset = build_dataset(base, Path(root), split, transform=transform, **options)
    return Subset(dataset, training_indices(len(dataset), holdout, holdout_seed))


# --------------------------------------------------------------------------------------------- Phi_R recipe
class RegionModel(Supervised):
    """Phi_R: cross-entropy on the hard-region crops, started from ``method.init_checkpoint`` when given
    (loaded by `Supervised`, whose training step this is)."""


def build(cfg: Config) -> RegionModel:
    """Return the LightningModule that trains Phi_R (stage 3 of the pipeline)."""
    return RegionModel(cfg)


# --------------------------------------------------------------------------------------------- helpers
def select_hard_classes(per_class: dict[str, dict[str, Any]], threshold: float) -> list[int]:
    """Return the trainIds whose IoU is below `threshold` among classes with ground-truth pixels
    (seed Sec. D: "classes whose image-level IoU falls below a threshold"); `per_class` as `segmentation_scores`."""
    hard = []
    for cls, name in enumerate(CLASS_NAMES):
        entry = per_class.get(name) or {}
        iou = entry.get("iou")
        if entry.get("gt_pixels", 0) > 0 and iou is not None and not math.isnan(iou) and iou < threshold:
            hard.append(cls)
    return hard


def build_rdn(p: RDNParams) -> RDN:
    """Return an untrained RDN with the architecture of `p`."""
    return RDN(p.stages, p.anchor_sizes, p.aspect_ratios, p.fg_iou, p.bg_iou, p.batch_per_image,
               p.positive_fraction, p.pre_nms, p.post_nms, p.nms)


def init_rdn_from(rdn: RDN, image_tensors: dict[str, torch.Tensor]) -> int:
    """Copy Phi_I's encoder tensors into the RDN backbone where name and shape match; return how many."""
    own = rdn.state_dict()
    fits = {k: v for k, v in image_tensors.items() if k.startswith("backbone.") and k in own and own[k].shape == v.shape}
    rdn.load_state_dict(fits, strict=False)
    return len(fits)


def train_rdn(rdn: RDN, samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], steps: int, batch_size: int,
              lr: float, seed: int, flip: bool = False, anchor_labels: list[torch.Tensor] | None = None,
              desc: str = "RDN", state_dir: str | Path | None = None, save_every: int = 50) -> list[float]:
    """Train `rdn` in place with SGD (momentum 0.9, weight decay 1e-4, `poly_factor` 0.9) on `samples`; with
    `anchor_labels` (HDM) those are the objectness targets (seed Eq. 2; no flip then). Returns the losses
    of all `steps` steps.

    With `state_dir`, the loop state (`nightseg.core.loop_state`: weights, SGD and schedule state, both RNG
    states, the rest of the sample order, the losses) is saved there every `save_every` steps and after the
    last one, and a call that finds a state there continues from it: the same batches, the same weights as
    an uninterrupted run. A state saved with other settings (steps, batch size, lr, seed, flip, HDM or not,
    number of samples and boxes) is refused with a UserError naming the file.
    """
    if anchor_labels is not None and flip:
        raise ValueError("HDM anchor labels belong to the unflipped anchors; train without flip")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the RPN samples its anchors from the global generator
    params = [q for q in rdn.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    max_steps = max(1, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly_factor(s, max_steps))
    order: list[int] = []
    losses: list[float] = []
    start = 0
    parts = ({"rdn": rdn}, {"optimizer": opt}, {"scheduler": sched})
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "flip": flip,
                "hdm": anchor_labels is not None, "samples": len(samples), "boxes": sum(len(b) for _, _, b in samples)}
    if state_dir is not None and state_step(state_dir) is not None:
        start, extra = load_loop_state(state_dir, *parts, settings=settings)
        gen.set_state(extra["generator"])
        torch.set_rng_state(extra["torch_rng"])
        order, losses = [int(i) for i in extra["order"]], [float(v) for v in extra["losses"]]
        log.info("%s: resuming %s at step %d", desc, state_dir, start)
    rdn.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, unit="step", disable=None,
               dynamic_ncols=True)
    for step in bar:
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = torch.randperm(len(samples), generator=gen).tolist()
            batch.append(order.pop())
        images, boxes, labels = [], [], []
        for i in batch:
            image, _, b = samples[i]
            if flip and bool(torch.rand((), generator=gen) < 0.5):
                width = image.shape[-1]
                image = image.flip(-1)
                b = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1) if len(b) else b
            images.append(image)
            boxes.append(b)
            if anchor_labels is not None:
                labels.append(anchor_labels[i])
        loss_terms = rdn.losses(torch.stack(images), boxes, labels if anchor_labels is not None else None)
        loss = loss_terms["objectness"] + loss_terms["box"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if state_dir is not None and (done % save_every == 0 or done == steps):
            save_loop_state(state_dir, done, *parts, settings=settings,
                            extra={"generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                   "order": list(order), "losses": losses})
    rdn.eval()
    return losses


@torch.no_grad()
def hdm_anchor_labels(rdn: RDN, image_model: nn.Module, region_model: nn.Module, image: torch.Tensor,
                      label: torch.Tensor, boxes: torch.Tensor, region_size: list[int], context: float,
                      min_side: int, chunk: int = 64) -> tuple[torch.Tensor, dict[str, int]]:
    """Return the HDM labels [A] of one image's anchors (seed Eq. 1): the RPN matching's labels with every
    positive anchor kept positive only where Phi_R (on the anchor's context crop) beats Phi_I in IoU inside
    the anchor; and counts ``{"positive", "kept"}``."""
    size = tuple(image.shape[-2:])
    anchors = rdn.anchors(image[None])
    labels = rdn.match(anchors, [boxes])[0][0]
    positive = torch.nonzero(labels == 1).flatten().tolist()
    if not positive:
        return labels.to(torch.int8), {"positive": 0, "kept": 0}
    image_pred = image_model(image[None]).argmax(1)[0]
    num_classes = int(image_model.config["num_classes"])
    # on the anchors' device: hdm_relabel combines them with `labels` (the GPU check runs this on a GPU)
    region_iou = torch.full((len(labels),), float("nan"), device=labels.device)
    image_iou = torch.full((len(labels),), float("nan"), device=labels.device)
    for start in range(0, len(positive), chunk):
        idx = positive[start:start + chunk]
        crops = [(0, *context_box(anchors[0][j].tolist(), context, min_side, size)) for j in idx]
        logits = region_model(crop_regions(image[None], crops, region_size))
        for j, crop, lg in zip(idx, crops, logits):
            cx1, cy1, cx2, cy2 = crop[1:]
            region_pred = torch.full(size, 255, dtype=torch.long, device=image.device)
            region_pred[cy1:cy2, cx1:cx2] = F.interpolate(lg[None], size=(cy2 - cy1, cx2 - cx1), mode="bilinear",
                                                          align_corners=False)[0].argmax(0)
            bx1, by1, bx2, by2 = pixel_box(anchors[0][j].tolist(), size)
            box = (max(bx1, cx1), max(by1, cy1), min(bx2, cx2), min(by2, cy2))
            region_iou[j] = proposal_iou(region_pred, label, box, num_classes)
            image_iou[j] = proposal_iou(image_pred, label, box, num_classes)
    out = hdm_relabel(labels, region_iou, image_iou)
    return out.to(torch.int8), {"positive": len(positive), "kept": int((out == 1).sum())}



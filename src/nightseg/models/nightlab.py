"""NightLab (Deng et al., CVPR 2022; NightLab): image-level + region-level segmenters, a region detection
network (RDN) and the merge.

* **Boxes of hard-class objects** (`boxes_from_label`): the connected components (8-connectivity,
  OpenCV) of every hard class in a trainId label map; a box is ``[x1, y1, x2, y2]`` in pixel-edge
  coordinates (``x2 = last column + 1``), the convention of torchvision's detection code.
* **Region crops** (`context_box`): a proposal is segmented by Phi_R on a square crop of side
  ``context * max(w, h)`` (at least ``min_side``, at most the image's shorter side) centred on it and
  shifted inside the image, resized to Phi_R's input size (e.g. 16 px -> 64 px: the "higher resolution").
* **RDN** (`RDN`): torchvision's `AnchorGenerator`, `RPNHead` and `RegionProposalNetwork` on one
  stride-8 feature map of a small dilated ResNet-18 (its first ``stages`` stages), as maskrcnn's RPN
  (seed Sec. A). `RDN.losses` optionally takes anchor labels rewritten by the HDM.
* **HDM** (`proposal_iou`, `hdm_relabel`): a positive anchor stays positive only where the region-level
  prediction beats the image-level one in IoU inside it (seed Eq. 1); the new labels replace the
  classification targets of the RPN loss (Eq. 2), and so the regression loss's positives too.
* **Merge** (`paste_regions`, `merge_logits`, seed Sec. B): inside the selected proposals, wherever Phi_R
  predicts a hard class, Phi_R's logits replace Phi_I's.
* `NightLab` bundles Phi_I, Phi_R and the RDN; ``forward(x)`` (x in [0, 1]) returns merged logits at
  x's size, so a NightLab checkpoint loads in `nightseg.inference.Predictor.from_checkpoint` (model
  name ``nightseg.models.nightlab:build_nightlab``). No ONNX export: the proposals, crops and merge are
  data-dependent Python loops, so a traced graph would replay the example input's proposals on every
  image; `nightseg.inference.onnx.export_onnx` refuses it (``NightLab.onnx_unsupported``) with a one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from nightseg.core.classes import IGNORE_INDEX
from nightseg.models.backbones import ResNetBackbone
from nightseg.models.registry import model_from_config
from nightseg.models.segmenters import IMAGENET_MEAN, IMAGENET_STD

MODEL_NAME = "nightseg.models.nightlab:build_nightlab"


# --------------------------------------------------------------------------------------------- boxes
def boxes_from_label(label: np.ndarray | torch.Tensor, classes: Sequence[int], min_area: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(boxes [N,4] float xyxy, class ids [N] int64)``: one box per connected component
    (8-connected) of each class in `classes` in a trainId label map, components under `min_area` pixels
    dropped. The RDN's training targets (seed Sec. A: "annotations (bounding box and class id)")."""
    arr = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    boxes: list[list[float]] = []
    ids: list[int] = []
    for cls in classes:
        mask = (arr == cls).astype(np.uint8)
        if not mask.any():
            continue
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, area in stats[1:count]:
            if area >= min_area:
                boxes.append([float(x), float(y), float(x + w), float(y + h)])
                ids.append(int(cls))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(ids, dtype=torch.int64)


def context_box(box: Sequence[float], context: float, min_side: int, image_size: tuple[int, int]
                ) -> tuple[int, int, int, int]:
    """Return the integer crop ``(x1, y1, x2, y2)`` that Phi_R segments for `box`: a square of side
    ``context * max(w, h)`` clamped to ``[min_side, min(H, W)]``, centred on the box, shifted inside the image."""
    height, width = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    side = math.ceil(max(x2 - x1, y2 - y1) * context)
    side = max(1, min(max(side, int(min_side)), height, width))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = min(max(round(cx - side / 2), 0), width - side)
    top = min(max(round(cy - side / 2), 0), height - side)
    return left, top, left + side, top + side


def pixel_box(box: Sequence[float], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Return the pixels a float box covers as an integer ``(x1, y1, x2, y2)``, clipped to the image."""
    height, width = image_size
    x1, y1 = max(0, math.floor(float(box[0]))), max(0, math.floor(float(box[1])))
    x2, y2 = min(width, math.ceil(float(box[2]))), min(height, math.ceil(float(box[3])))
    return x1, y1, max(x1, x2), max(y1, y2)


def crop_regions(images: torch.Tensor, crops: Sequence[tuple[int, int, int, int, int]], size: Sequence[int]
                 ) -> torch.Tensor:
    """Return the crops ``(batch index, x1, y1, x2, y2)`` of `images` [B,3,H,W] resized (bilinear) to
    `size`, as one batch [K,3,*size] for Phi_R."""
    if not crops:
        return images.new_zeros((0, images.shape[1], *size))
    out = [F.interpolate(images[b:b + 1, :, y1:y2, x1:x2], size=tuple(size), mode="bilinear", align_corners=False)
           for b, x1, y1, x2, y2 in crops]
    return torch.cat(out)


# --------------------------------------------------------------------------------------------- HDM
def proposal_iou(pred: torch.Tensor, target: torch.Tensor, box: Sequence[int], num_classes: int) -> float:
    """Return the mean IoU of the label maps `pred` vs `target` (255 ignored) inside the integer `box`,
    over the classes present in either (the iou(P_j, Y_j) of seed Eq. 1); NaN without labelled pixels."""
    x1, y1, x2, y2 = (int(v) for v in box)
    p, t = pred[y1:y2, x1:x2].reshape(-1), target[y1:y2, x1:x2].reshape(-1)
    keep = t != IGNORE_INDEX
    p, t = p[keep].long(), t[keep].long()
    if t.numel() == 0:
        return float("nan")
    cm = torch.bincount(t * num_classes + p.clamp(0, num_classes - 1), minlength=num_classes ** 2)
    cm = cm.reshape(num_classes, num_classes).double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def hdm_relabel(anchor_labels: torch.Tensor, region_iou: torch.Tensor, image_iou: torch.Tensor) -> torch.Tensor:
    """Return the HDM anchor labels (seed Eq. 1-2): ``v'_j = 1[iou(P^R_j) > iou(P^I_j)]`` and
    ``Y^P = Y * V'``, i.e. a positive anchor (1) becomes background (0) unless the region-level IoU is
    strictly higher (NaN compares false); background (0) and ignored (-1) anchors are unchanged."""
    better = region_iou > image_iou
    out = anchor_labels.clone()
    out[(anchor_labels == 1) & ~better] = 0
    return out


# --------------------------------------------------------------------------------------------- merge
def paste_regions(region_logits: Sequence[torch.Tensor], crops: Sequence[Sequence[int]],
                  proposals: Sequence[Sequence[float]], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits [C,H,W], covered [H,W] bool)``: each region's logits (any size) resized to its crop
    ``(x1, y1, x2, y2)`` and kept inside its proposal box; overlapping proposals are averaged."""
    height, width = image_size
    num_classes = region_logits[0].shape[0] if len(region_logits) else 1
    device = region_logits[0].device if len(region_logits) else torch.device("cpu")
    total = torch.zeros(num_classes, height, width, device=device)
    count = torch.zeros(height, width, device=device)
    for logits, crop, box in zip(region_logits, crops, proposals):
        cx1, cy1, cx2, cy2 = (int(v) for v in crop)
        resized = F.interpolate(logits[None].float(), size=(cy2 - cy1, cx2 - cx1), mode="bilinear",
                                align_corners=False)[0]
        bx1, by1, bx2, by2 = pixel_box(box, image_size)
        x1, y1, x2, y2 = max(bx1, cx1), max(by1, cy1), min(bx2, cx2), min(by2, cy2)
        if x2 <= x1 or y2 <= y1:
            continue
        total[:, y1:y2, x1:x2] += resized[:, y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1]
        count[y1:y2, x1:x2] += 1
    covered = count > 0
    return total / count.clamp(min=1), covered


def merge_logits(image_logits: torch.Tensor, region_logits: torch.Tensor, covered: torch.Tensor,
                 hard_classes: Sequence[int]) -> torch.Tensor:
    """Return the merged logits (seed Sec. B): Phi_R's logits where a pixel is `covered` by a selected
    proposal AND Phi_R predicts a hard class there, Phi_I's elsewhere. Shapes [..., C, H, W] / [..., H, W]."""
    hard = torch.tensor(list(hard_classes), dtype=torch.long, device=region_logits.device)
    mask = covered & torch.isin(region_logits.argmax(dim=-3), hard)
    return torch.where(mask.unsqueeze(-3), region_logits.to(image_logits.dtype), image_logits)


# --------------------------------------------------------------------------------------------- RDN
class RDN(nn.Module):
    """Region detection network: an anchor-based RPN (torchvision components) on a small ResNet-18.

    ``propose(x)`` returns per image ``(boxes [K,4], objectness probabilities [K])`` after NMS;
    ``losses(x, targets, anchor_labels=None)`` returns the RPN's objectness and box losses, where
    `anchor_labels` (one [A] tensor per image, from `hdm_relabel`) replace the IoU-matching labels.
    """

    def __init__(self, stages: int = 2, anchor_sizes: Sequence[int] = (8, 16, 32),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), fg_iou: float = 0.5, bg_iou: float = 0.3,
                 batch_per_image: int = 128, positive_fraction: float = 0.5, pre_nms: Sequence[int] = (300, 100),
                 post_nms: Sequence[int] = (50, 20), nms: float = 0.5) -> None:
        super().__init__()
        self.config = {"stages": int(stages), "anchor_sizes": [int(s) for s in anchor_sizes],
                       "aspect_ratios": [float(r) for r in aspect_ratios], "fg_iou": float(fg_iou),
                       "bg_iou": float(bg_iou), "batch_per_image": int(batch_per_image),
                       "positive_fraction": float(positive_fraction), "pre_nms": [int(n) for n in pre_nms],
                       "post_nms": [int(n) for n in post_nms], "nms": float(nms)}
        self.backbone = ResNetBackbone(18, output_stride=8, stages=int(stages))
        generator = AnchorGenerator((tuple(int(s) for s in anchor_sizes),), (tuple(float(r) for r in aspect_ratios),))
        head = RPNHead(self.backbone.channels[-1], generator.num_anchors_per_location()[0])
        self.rpn = RegionProposalNetwork(
            generator, head, fg_iou, bg_iou, batch_per_image, positive_fraction,
            {"training": int(pre_nms[0]), "testing": int(pre_nms[1])},
            {"training": int(post_nms[0]), "testing": int(post_nms[1])}, nms, score_thresh=0.0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _run(self, x: torch.Tensor) -> tuple[ImageList, torch.Tensor, torch.Tensor, list[torch.Tensor], list[int]]:
        features = [self.backbone((x - self.mean) / self.std)[-1]]
        images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
        objectness, deltas = self.rpn.head(features)
        anchors = self.rpn.anchor_generator(images, features)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        return images, objectness, deltas, anchors, per_level

    def anchors(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the anchors [A,4] of each image of `x` (the same for every image of one size)."""
        with torch.no_grad():
            return self._run(x)[3]

    def match(self, anchors: list[torch.Tensor], boxes: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the RPN's anchor labels (1 object, 0 background, -1 ignored) and matched boxes per image."""
        return self.rpn.assign_targets_to_anchors(anchors, [{"boxes": b} for b in boxes])

    def propose(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return ``(boxes [K,4], objectness probabilities [K])`` per image, best first, after NMS."""
        images, objectness, deltas, anchors, per_level = self._run(x)
        proposals = self.rpn.box_coder.decode(deltas.detach(), anchors).view(x.shape[0], -1, 4)
        boxes, scores = self.rpn.filter_proposals(proposals, objectness.detach(), images.image_sizes, per_level)
        out = []
        for b, s in zip(boxes, scores):
            order = s.argsort(descending=True)
            out.append((b[order], s[order]))
        return out

    def losses(self, x: torch.Tensor, boxes: list[torch.Tensor], anchor_labels: list[torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor]:
        """Return ``{"objectness", "box"}`` RPN losses for ground-truth `boxes` (one [N,4] per image); with
        `anchor_labels` (HDM, seed Eq. 2) those labels are the classification targets instead of the matching's."""
        _, objectness, deltas, anchors, _ = self._run(x)
        labels, matched = self.match(anchors, boxes)
        if anchor_labels is not None:
            labels = [a.to(labels[0].dtype) for a in anchor_labels]
        targets = self.rpn.box_coder.encode(matched, anchors)
        loss_obj, loss_box = self.rpn.compute_loss(objectness, deltas, labels, targets)
        return {"objectness": loss_obj, "box": loss_box}


# --------------------------------------------------------------------------------------------- NightLab
class NightLab(nn.Module):
    """Phi_I + Phi_R + RDN with the merge; ``forward(x)`` returns merged logits [B,C,H,W] at x's size."""

    onnx_unsupported = ("its region proposals, crops and merge depend on each image, and a traced ONNX graph "
                        "would replay the example image's proposals")
    """Why `nightseg.inference.onnx.export_onnx` refuses this module (read there for any sub-module)."""

    def __init__(self, image_model: nn.Module, region_model: nn.Module, rdn: RDN, hard_classes: Sequence[int],
                 region_size: Sequence[int] = (64, 64), context: float = 2.0, min_side: int = 16,
                 max_proposals: int = 8, score_thresh: float = 0.5) -> None:
        super().__init__()
        self.image_model = image_model
        self.region_model = region_model
        self.rdn = rdn
        self.hard_classes = [int(c) for c in hard_classes]
        self.region_size = [int(s) for s in region_size]
        self.context = float(context)
        self.min_side = int(min_side)
        self.max_proposals = int(max_proposals)
        self.score_thresh = float(score_thresh)
        self.feature_channels = getattr(image_model, "feature_channels", None)
        self.config = {"name": MODEL_NAME, "num_classes": int(image_model.config["num_classes"]),
                       "image_model": dict(image_model.config), "region_model": dict(region_model.config),
                       "rdn": dict(rdn.config), "hard_classes": self.hard_classes, "region_size": self.region_size,
                       "context": self.context, "min_side": self.min_side, "max_proposals": self.max_proposals,
                       "score_thresh": self.score_thresh}

    def select(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return the selected proposals per image: objectness >= ``score_thresh``, at most ``max_proposals``."""
        out = []
        for boxes, scores in self.rdn.propose(x):
            keep = scores >= self.score_thresh
            out.append((boxes[keep][: self.max_proposals], scores[keep][: self.max_proposals]))
        return out

    def forward_details(self, x: torch.Tensor, proposals: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                        ) -> dict[str, Any]:
        """Return ``{"logits", "image_logits", "proposals", "covered"}``: merged and image-level logits
        [B,C,H,W], the selected proposals per image and the [B,H,W] mask they cover. `proposals` (per image
        ``(boxes [K,4], scores [K])``, e.g. ground-truth boxes) replace the detector's."""
        size = tuple(x.shape[-2:])
        image_logits = self.image_model(x)
        proposals = self.select(x) if proposals is None else proposals
        crops = [(b, *context_box(box.tolist(), self.context, self.min_side, size))
                 for b, (boxes, _) in enumerate(proposals) for box in boxes]
        region = self.region_model(crop_regions(x, crops, self.region_size)) if crops else None
        merged, covered = [], []
        k = 0
        for b, (boxes, _) in enumerate(proposals):
            n = len(boxes)
            if n == 0 or region is None:
                merged.append(image_logits[b])
                covered.append(torch.zeros(size, dtype=torch.bool, device=x.device))
                continue
            logits, cover = paste_regions(region[k:k + n], [c[1:] for c in crops[k:k + n]], boxes.tolist(), size)
            merged.append(merge_logits(image_logits[b], logits, cover, self.hard_classes))
            covered.append(cover)
            k += n
        return {"logits": torch.stack(merged), "image_logits": image_logits, "proposals": proposals,
                "covered": torch.stack(covered)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the merged logits at the size of `x` (RGB in [0, 1])."""
        return self.forward_details(x)["logits"]


def build_nightlab(num_classes: int, image_model: dict, region_model: dict, rdn: dict, hard_classes: Sequence[int],
                   region_size: Sequence[int] = (64, 64), context: float = 2.0, min_side: int = 16,
                   max_proposals: int = 8, score_thresh: float = 0.5, pretrained: bool = False) -> NightLab:
    """Return an (untrained) `NightLab` from its checkpoint ``model`` metadata (the `module:factory` form)."""
    for what, cfg in (("image_model", image_model), ("region_model", region_model)):
        if int(cfg.get("num_classes", num_classes)) != int(num_classes):
            raise ValueError(f"{what} has {cfg.get('num_classes')} classes, NightLab {num_classes}")
    return NightLab(model_from_config(image_model, "NightLab image_model"),
                    model_from_config(region_model, "NightLab region_model"), RDN(**rdn), hard_classes,
                    region_size, context, min_side, max_proposals, score_thresh)

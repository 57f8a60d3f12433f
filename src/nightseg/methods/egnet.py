"""EGNet training (EGNet paper, Sec. 4-5): supervised segmentation plus the exposure stream's L1 loss.

The whole training step is below. The model must be an `nightseg.models.egnet.EGNet`
(``model.name: nightseg.models.egnet:egnet_r101`` or ``...:egnet_tiny``). One forward pass
(`EGNet.forward_with_exposure`) gives the logits and the exposure map M_E (sigmoid, output stride 8);
the loss is

    L = alpha * L_c + beta * L_e                                       (Sec. 4.1; alpha 1, beta 0.01)

with L_c the cross-entropy (255 ignored) and L_e = mean |M_E - V|, V the HSV value max(R, G, B) of the
input crop area-averaged to M_E's resolution (`nightseg.models.egnet.exposure_map`). Variants without an
exposure stream (``no_es``, ``extra_input``, ``exposure_attention``) train with L_c alone.

Like `methods.supervised`, a second labelled stream (``data.target``: NightCity next to Cityscapes, the
paper's "C + N" setting) makes every step a mixed batch through one forward pass:
``L_c = CE(source) + target_weight * CE(target)``; L_e covers every image of the batch (V needs no label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.methods.base import masked_label
from nightseg.methods.supervised import Supervised
from nightseg.models.egnet import EGNet, exposure_map


@dataclass
class Params:
    """Keys of the ``method:`` section of an EGNet recipe."""

    name: str = "egnet"
    alpha: float = 1.0
    """Weight of the segmentation cross-entropy L_c (Sec. 5: 1)."""
    beta: float = 0.01
    """Weight of the exposure L1 loss L_e (Sec. 5: 0.01)."""
    target_weight: float = 1.0
    """Weight of the ``data.target`` stream's cross-entropy in joint (Cityscapes + NightCity) training."""
    class_weights: list[float] | str | None = None
    """``null`` (plain cross-entropy, as the paper), a list of per-class weights, ``inverse`` or ``dannet_log``."""
    init_checkpoint: str | None = None
    """An EGNet checkpoint whose weights the model starts from (the supervised recipe's key)."""


class EGNetModule(Supervised):
    """Cross-entropy on the labelled stream(s) plus beta * L1 on the exposure map; see the module docstring.

    Class weights, the joint-crop check and `cross_entropy` are the supervised recipe's."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if not isinstance(self.model, EGNet):
            raise UserError(f"{cfg.recipe}: model.name={cfg.model.name!r}: the egnet method needs an EGNet model, "
                            "e.g. nightseg.models.egnet:egnet_tiny or nightseg.models.egnet:egnet_r101")
        self.params: Params = cfg.method

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        source = batch["source"]
        samples = [source] + ([batch["target"]] if "target" in batch else [])
        images = torch.cat([s["image"] for s in samples])
        logits, m_e = self.model.forward_with_exposure(images)
        terms: dict[str, torch.Tensor] = {}
        parts = logits.split([len(s["image"]) for s in samples])
        terms["ce_source"] = self.cross_entropy(parts[0], masked_label(source))
        ce = terms["ce_source"]
        if len(samples) > 1:
            terms["ce_target"] = self.cross_entropy(parts[1], masked_label(samples[1]))
            ce = ce + self.params.target_weight * terms["ce_target"]
        total = self.params.alpha * ce
        if m_e is not None:  # L_e: L1 between M_E and the input's V channel at M_E's resolution
            terms["exposure_l1"] = F.l1_loss(m_e.float(), exposure_map(images.float(), m_e.shape[-2:]))
            total = total + self.params.beta * terms["exposure_l1"]
        return self.log_losses(total, **terms)


def build(cfg: Config) -> EGNetModule:
    """Return the EGNet LightningModule for `cfg`."""
    return EGNetModule(cfg)

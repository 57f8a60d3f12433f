"""ULCA: night-time segmentation with unsupervised learning and cross attention (ULCA, Cheng et al.,
ACML 2022, Fig. 1 and Section 3). The whole training step is `ULCA.training_step` below.

Each step takes a labelled day image A (``batch["source"]``) and a coarsely aligned night/day pair
B_n, B_d (``batch["target"]``, e.g. ``dark_zurich_pairs``) and computes (Eq. 9)

    L_total = L_seg + L_static + beta1 * L_mix + beta2 * L_kl          beta1 = 0.04, beta2 = 0.75

1. **Relighting.** A frozen Zero-DCE net g (`nightseg.models.relight.DCENet`) relights A, B_d and B_n.
2. **L_seg** (Eq. 5-6): class-weighted cross-entropy on A, ``w_k = 1/a_k`` from source class frequencies.
3. **Day/night predictions.** B_d is segmented without gradient (it only supplies pseudo labels and the
   cross-attention keys); B_n is segmented with cross attention to B_d's deepest features (Sec. 3.2).
4. **L_static** (Eq. 7-8, DANNet's): focal loss of the night prediction on the static classes against the
   day-corrected pseudo label, a class counting as correct anywhere in the 3x3 neighbourhood.
5. **L_mix** (Sec. 3.1, Eq. 1): NightMix pastes a random half of the hard classes of A onto B_n; the
   mixed label takes L_A there and the day-corrected night pseudo label S~_Bn elsewhere.
6. **L_kl** (Sec. 3.3, Eq. 4): KL(weak || strong) between B_n with weak Gaussian noise (detached) and B_n
   with strong photometric augmentation.

Every term has a switch (``method.<term>.enabled``), so the rows of the seed's Table 3 are configs
(``configs/cpu/ulca_*.yaml``). Each ambiguity of the paper and how it is resolved here is written up in
``docs/methods.md`` ("ULCA").

At validation/inference the image is relit, then segmented; the cross attention, having no day image,
follows ``cross_attention.test_policy`` (``bypass`` or ``self``; `CrossAttentionSegmenter` also accepts a
reference image). Exported checkpoints hold the segmenter plus the frozen relighting net under
``relight.*`` (see `nightseg.models.relight.split_relight`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from nightseg.core.checkpoint import load_segmenter_weights
from nightseg.core.classes import NUM_CLASSES, STATIC_CLASSES, hard_classes
from nightseg.core.config import Config
from nightseg.core.errors import UserError
from nightseg.core.io import read_label
from nightseg.data.photometric import StrongConfig, WeakConfig, strong_augment, weak_augment
from nightseg.data.streams import build_stream_dataset
from nightseg.losses.segmentation import (
    CITYSCAPES_FREQUENCIES,
    class_frequencies,
    class_weights,
    consistency_kl,
    static_loss,
    weighted_cross_entropy,
)
from nightseg.methods.base import SegmentationModule, masked_label
from nightseg.methods.nightmix import match_size, nightmix
from nightseg.methods.pseudo_label import fuse_day_night, pseudo_label
from nightseg.models.registry import build_model
from nightseg.models.relight import WEIGHTS_ENV, DCENet, load_dce_weights, relight


# --------------------------------------------------------------------------------------------- config
@dataclass
class RelightParams:
    """The frozen relighting network g (Fig. 1)."""

    enabled: bool = True
    weights: str | None = None
    """DCE-Net weights: the official Zero-DCE ``Epoch99.pth`` (``official``: downloaded once) or a
    ``nightseg relight train`` .safetensors (relative paths from the current directory); ``null``:
    ``$NIGHTSEG_RELIGHT_WEIGHTS``."""
    curve_scale: float = 1.0
    """Estimate the curve maps on the image downscaled by this factor and upsample them (Zero-DCE++'s
    speed-up; 1.0 = Zero-DCE as in the paper)."""


@dataclass
class StaticParams:
    """L_static, Eq. 7-8 (coefficient 1 in Eq. 9)."""

    enabled: bool = True
    weight: float = 1.0
    gamma: float = 1.0
    """Focal exponent (the seed gives no value; DANNet's `StaticLoss` defaults to 1.0 and its train.py keeps
    that default, so 1.0 is DANNet's code; 0 turns the focal term off)."""
    kernel: int = 3
    """Neighbourhood in which a pseudo-label class counts as correct (3 = the paper's 3x3)."""
    softmax_over: Literal["static", "all"] = "static"
    """Softmax over the static channels only (DANNet's code) or over all classes."""
    class_weights: bool = False
    """Multiply the night probabilities by the class weights of ``pseudo_label.weights`` before the max,
    as DANNet's code does (Eq. 8 has no weights)."""


@dataclass
class PseudoLabelParams:
    """How the day prediction corrects the night one (static-loss label F_td and NightMix label S~_Bn)."""

    mode: Literal["dannet", "day", "night"] = "dannet"
    space: Literal["logits", "probs"] = "logits"
    threshold: float = 0.4
    high: float = 0.8
    low: float = 0.2
    weights: Literal["dannet_log", "none"] = "dannet_log"
    """Class weights that multiply the fused scores before the argmax (DANNet: its log-normalised ones)."""
    restrict_to_static: bool = False
    """Static-loss label from the argmax over the static channels only (the literal Eq. 8) instead of
    DANNet's argmax over all classes with dynamic pixels ignored."""


@dataclass
class NightMixParams:
    """L_mix, Sec. 3.1 and Eq. 1 (coefficient beta1 in Eq. 9)."""

    enabled: bool = True
    weight: float = 0.04
    easy_classes: list[str] = field(default_factory=lambda: ["road", "vegetation", "sky"])
    """Classes never pasted ("easy split classes such as sky, road and forest")."""


@dataclass
class ConsistencyParams:
    """L_kl, Sec. 3.3 and Eq. 4 (coefficient beta2 in Eq. 9)."""

    enabled: bool = True
    weight: float = 0.75
    target: Literal["soft", "hard"] = "soft"
    """Y_w as the weak branch's class distribution (Eq. 4's KL) or its one-hot argmax (FixMatch)."""
    shared_forward: Literal["weak", "none", "strong"] = "weak"
    """Which night forward the static loss shares: ``weak`` (default) runs it on the weakly augmented B_n,
    doubling as the weak branch; ``none`` runs it on B_n itself, plus a separate no-gradient weak
    forward; ``strong`` runs it on the strongly augmented B_n, doubling as the strong branch, with pseudo
    labels from a no-gradient weak forward (one gradient pass less: the cheapest, FixMatch-like)."""
    weak_noise_std: list[float] = field(default_factory=lambda: [0.0, 0.03])
    """Range of the per-image std of the weak Gaussian noise (images in [0,1])."""
    strong: dict[str, Any] = field(default_factory=dict)
    """Overrides of `nightseg.data.photometric.StrongConfig` (brightness, contrast, blur_sigma, ...)."""


@dataclass
class CrossAttentionParams:
    """Cross attention between the night and day features (Sec. 3.2, Eq. 2-3)."""

    enabled: bool = True
    value: Literal["night", "day"] = "night"
    """Where V comes from: the night features (Eq. 3's text) or the day features."""
    unpaired: Literal["bypass", "self"] = "bypass"
    """What the source image A and the NightMix image X_A (no day pair) get during training."""
    test_policy: Literal["bypass", "self"] = "bypass"
    """What validation/inference images (no day pair) get; saved in the checkpoint's model config."""
    qk_channels: Literal["full", "reduced"] = "reduced"
    """Width of Q and K (Eq. 2): ``full`` = C, as the paper writes W_q and W_k; ``reduced`` = C / ``reduction``
    (SAGAN/DANet's C/8). Default and measurements: docs/methods.md, "Cross attention"."""
    reduction: int = 8
    """The divisor of ``qk_channels: reduced``."""


@dataclass
class Params:
    """Keys of the ``method:`` section of a ULCA recipe (see ``configs/ulca.yaml``)."""

    name: str = "ulca"
    class_weights: Literal["inverse", "dannet_log", "none"] = "inverse"
    """L_seg weights: ``inverse`` = Eq. 5 ``1/a_k``; ``dannet_log`` = DANNet's; ``none``."""
    class_frequencies: list[float] | str = "cityscapes"
    """a_k: ``cityscapes`` (DANNet's Cityscapes table), ``source`` (counted from the source stream's label
    files when training starts) or a list of ``num_classes`` numbers."""
    ce_normalization: Literal["paper", "weighted_mean", "mean"] = "paper"
    """L_seg divisor: ``paper`` = N|C| (Eq. 6), ``weighted_mean`` = sum of pixel weights (PyTorch/DANNet)."""
    init_checkpoint: str | None = None
    """Start the segmenter from this NightSeg checkpoint (e.g. a source-only run's ``best.safetensors``), as
    DANNet and ULCA start from a Cityscapes-trained PSPNet; the cross attention starts fresh."""
    relight: RelightParams = field(default_factory=RelightParams)
    static: StaticParams = field(default_factory=StaticParams)
    pseudo_label: PseudoLabelParams = field(default_factory=PseudoLabelParams)
    nightmix: NightMixParams = field(default_factory=NightMixParams)
    consistency: ConsistencyParams = field(default_factory=ConsistencyParams)
    cross_attention: CrossAttentionParams = field(default_factory=CrossAttentionParams)


# --------------------------------------------------------------------------------------------- helpers
def load_relight(params: RelightParams) -> DCENet:
    """Return the frozen (eval, no-grad) DCE-Net of `params`; UserError naming the key when none is given."""
    weights = params.weights or os.environ.get(WEIGHTS_ENV)
    if not weights:
        raise UserError(
            "method.relight.weights: no relighting weights; set it (or $NIGHTSEG_RELIGHT_WEIGHTS) to the official "
            "Zero-DCE Epoch99.pth ('official' downloads it) or a file from `nightseg relight train`, or set method.relight.enabled=false"
        )
    net = load_dce_weights(Path(weights).expanduser())
    net.requires_grad_(False)
    return net.eval()


def resolve_frequencies(spec: list[float] | str, num_classes: int) -> torch.Tensor | None:
    """Return a_k for a ``class_frequencies`` setting (None for ``source``: counted later)."""
    if isinstance(spec, str):
        if spec == "source":
            return None
        if spec != "cityscapes":
            raise UserError(f"method.class_frequencies={spec!r}: expected cityscapes, source or a list of numbers")
        if num_classes != len(CITYSCAPES_FREQUENCIES):
            raise UserError(f"method.class_frequencies=cityscapes needs the 19 Cityscapes classes, the model has "
                            f"{num_classes}; give a list or use 'source'")
        return torch.tensor(CITYSCAPES_FREQUENCIES, dtype=torch.float64)
    if len(spec) != num_classes or min(spec) < 0 or sum(spec) <= 0:
        raise UserError(f"method.class_frequencies: expected {num_classes} non-negative numbers, got {spec}")
    return torch.tensor(spec, dtype=torch.float64)


def source_labels(dataset: Any) -> Any:
    """Yield the label maps of a source dataset: straight from its label files when it lists them
    (`SegmentationDataset`, possibly inside a `Subset`), else through ``dataset[i]["label"]``."""
    indices = range(len(dataset))
    base = dataset
    if isinstance(dataset, torch.utils.data.Subset):
        indices, base = dataset.indices, dataset.dataset
    records = getattr(base, "records", None)
    label_map = getattr(base, "label_map", None)
    if records is not None and label_map is not None:
        for i in indices:
            if records[i].label is not None:
                yield torch.from_numpy(label_map.apply(read_label(records[i].label)).astype("int64"))
        return
    for i in range(len(dataset)):
        yield dataset[i]["label"]


# --------------------------------------------------------------------------------------------- module
class ULCA(SegmentationModule):
    """The ULCA training recipe (ULCA); see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        p: Params = cfg.method
        ca = p.cross_attention
        model_cfg = cfg.model
        options = dict(model_cfg.options)
        if ca.enabled:
            options["cross_attention"] = {"value": ca.value, "policy": ca.test_policy, "reduction": ca.reduction,
                                          "qk_channels": ca.qk_channels}
        model = build_model(dataclasses.replace(model_cfg, options=options))
        if ca.enabled and not hasattr(model, "attention"):
            raise UserError(f"model.name={model_cfg.name}: this model has no cross-attention wrapper; "
                            "set method.cross_attention.enabled=false")
        if p.init_checkpoint:
            load_segmenter_weights(model, p.init_checkpoint)
        super().__init__(cfg, model)
        self.params = p
        # Frozen by requires_grad=False and no_grad; DCE-Net has no BatchNorm/dropout, so its train/eval
        # mode changes nothing and it follows the module's (Lightning warns about submodules left in eval).
        self.relight = load_relight(p.relight).train() if p.relight.enabled else None
        freq = resolve_frequencies(p.class_frequencies, self.num_classes)
        self.register_buffer("seg_weight", None, persistent=False)
        self.register_buffer("pl_weight", None, persistent=False)
        if freq is not None:
            self.set_class_frequencies(freq)
        try:
            self.hard = hard_classes(p.nightmix.easy_classes)
        except ValueError as exc:
            raise UserError(f"method.nightmix.easy_classes: {exc}") from None
        self.static_classes = list(STATIC_CLASSES)
        if len(p.consistency.weak_noise_std) != 2:
            raise UserError(f"method.consistency.weak_noise_std: expected [lo, hi], got {p.consistency.weak_noise_std}")
        self.weak = WeakConfig(noise_std=tuple(p.consistency.weak_noise_std))
        try:
            self.strong = StrongConfig(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in p.consistency.strong.items()})
        except TypeError as exc:
            raise UserError(f"method.consistency.strong: {exc}; valid keys: "
                            f"{', '.join(StrongConfig.__dataclass_fields__)}") from None
        if self.num_classes != NUM_CLASSES:
            raise UserError(f"model.num_classes={self.num_classes}: ULCA's static/easy class sets are the 19 "
                            "Cityscapes classes")

    # ---- class weights
    def set_class_frequencies(self, freq: torch.Tensor) -> None:
        """Set the L_seg weights (``class_weights``) and pseudo-label weights from frequencies a_k."""
        p = self.params
        device = self.device
        self.seg_weight = None if p.class_weights == "none" else class_weights(freq, p.class_weights).to(device)
        pl = p.pseudo_label.weights
        self.pl_weight = None if pl == "none" else class_weights(freq, pl).to(device)

    def setup(self, stage: str) -> None:
        """Count the source class frequencies when ``class_frequencies: source`` (deterministic, so a
        resumed run gets the same weights)."""
        if stage != "fit" or self.params.class_frequencies != "source" or self.seg_weight is not None:
            return
        dataset = build_stream_dataset(self.cfg.data.source, self.cfg.data.root, train=False)
        freq = class_frequencies(source_labels(dataset), self.num_classes, progress=self.cfg.train.progress,
                                 total=len(dataset))
        self.set_class_frequencies(freq)

    # ---- building blocks
    def relit(self, x: torch.Tensor) -> torch.Tensor:
        """Return g(x) (frozen Zero-DCE, `nightseg.models.relight.relight`), or x when relighting is off."""
        return relight(self.relight, x, self.params.relight.curve_scale).to(x.dtype)

    def segment(self, x: torch.Tensor, day: torch.Tensor | None = None, policy: str | None = None) -> torch.Tensor:
        """Return logits for images `x` already relit; with cross attention, attend to the deepest `day`
        features (paired images) or follow `policy` (unpaired)."""
        if not self.params.cross_attention.enabled:
            return self.model(x)
        features = self.model.encode(x)
        features[-1] = self.model.attention(features[-1], day, policy=policy)
        return self.model.decode(features, x.shape[-2:])

    def step_generator(self) -> torch.Generator:
        """Return a CPU generator for this step's random choices, seeded from the global RNG (which the
        engine re-seeds from (seed, step, rank) before every step, so a resumed run draws the same)."""
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))

    # ---- the training step (Fig. 1)
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.params
        if "target" not in batch:
            raise UserError(f"{self.cfg.recipe}: ULCA needs data.target (day/night pairs, e.g. dark_zurich_pairs)")
        source, target = batch["source"], batch["target"]
        image_a, label_a = source["image"], masked_label(source)
        night, day = target["night"], target["day"]
        gen = self.step_generator()
        zero = image_a.new_zeros(())
        terms: dict[str, torch.Tensor] = {}

        # 1. frozen relighting of A, B_d, B_n (B_n weakly augmented when a shared forward is its weak branch)
        share = p.consistency.shared_forward if p.consistency.enabled else "none"
        relit_a, relit_day = self.relit(image_a), self.relit(day)
        relit_night = self.relit(night if share == "none" else weak_augment(night, gen, self.weak))

        # 2. L_seg: class-weighted cross-entropy on the source image (Eq. 5-6)
        loss_seg = weighted_cross_entropy(self.segment(relit_a, policy=p.cross_attention.unpaired).float(),
                                          label_a, self.seg_weight, p.ce_normalization)
        terms["seg"] = loss_seg

        # 3. day prediction (no gradient: it only supplies pseudo labels and keys) and night prediction with
        #    cross attention to the day features (Sec. 3.2). `logits_night` is the night prediction that
        #    trains (static loss), `logits_label` the one the pseudo labels come from.
        with torch.no_grad():
            day_features = self.model.encode(relit_day)
            logits_day = self.model.decode(day_features, relit_day.shape[-2:]).float()
        day_deep = day_features[-1] if p.cross_attention.enabled else None
        if share == "strong":
            with torch.no_grad():
                logits_label = self.segment(relit_night, day=day_deep).float()
            relit_strong = self.relit(strong_augment(night, gen, self.strong))
            logits_night = self.segment(relit_strong, day=day_deep).float()
        else:
            logits_night = logits_label = self.segment(relit_night, day=day_deep).float()
        pl = p.pseudo_label
        fused = fuse_day_night(logits_day, logits_label, pl.mode, self.static_classes, pl.space,
                               pl.threshold, pl.high, pl.low)

        # 4. L_static on the night prediction against the day-corrected static pseudo label (Eq. 7-8)
        loss_static = zero
        if p.static.enabled:
            label_static = pseudo_label(fused, self.pl_weight, static_only=True, static_classes=self.static_classes,
                                        restrict_to_static=pl.restrict_to_static)
            loss_static = static_loss(logits_night, label_static, p.static.gamma, self.static_classes,
                                      self.pl_weight if p.static.class_weights else None, p.static.kernel,
                                      p.static.softmax_over)
            terms["static"] = loss_static

        # 5. L_mix: NightMix of A and B_n, labelled with L_A and the corrected night label S~_Bn (Eq. 1)
        loss_mix = zero
        if p.nightmix.enabled:
            label_night = pseudo_label(fused, self.pl_weight)
            night_crop, label_crop = match_size(relit_night, label_night, tuple(relit_a.shape[-2:]), gen)
            mixed, mixed_label, mask = nightmix(relit_a, label_a, night_crop, label_crop, self.hard, gen)
            logits_mix = self.segment(mixed, policy=p.cross_attention.unpaired).float()
            loss_mix = weighted_cross_entropy(logits_mix, mixed_label)
            terms["mix"] = loss_mix
            terms["mix_share"] = mask.float().mean()

        # 6. L_kl: weak (detached inside consistency_kl) vs strong photometric augmentation of B_n (Eq. 4)
        loss_kl = zero
        if p.consistency.enabled:
            if share == "strong":
                logits_weak, logits_strong = logits_label, logits_night
            else:
                if share == "weak":
                    logits_weak = logits_night
                else:
                    with torch.no_grad():
                        relit_weak = self.relit(weak_augment(night, gen, self.weak))
                        logits_weak = self.segment(relit_weak, day=day_deep).float()
                relit_strong = self.relit(strong_augment(night, gen, self.strong))
                logits_strong = self.segment(relit_strong, day=day_deep).float()
            loss_kl = consistency_kl(logits_strong, logits_weak, p.consistency.target)
            terms["kl"] = loss_kl

        # Eq. 9
        total = (loss_seg + p.static.weight * loss_static + p.nightmix.weight * loss_mix
                 + p.consistency.weight * loss_kl)
        if p.cross_attention.enabled:
            terms["ca_alpha"] = self.model.attention.alpha.detach().reshape(())
        return self.log_losses(total, **terms)

    # ---- validation, optimisation, export
    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Return logits of relit images; cross attention follows ``cross_attention.test_policy``."""
        return self.model(self.relit(image))

    def param_groups(self) -> list[dict[str, Any]]:
        """Only the segmenter (and its cross attention) trains; the relighting net is frozen."""
        return [{"params": [q for q in self.model.parameters() if q.requires_grad]}]

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Return the segmenter's tensors plus the relighting net's under ``relight.*`` (see `nightseg.models.relight.split_relight`)."""
        tensors = dict(self.model.state_dict())
        if self.relight is not None:
            tensors.update({f"relight.{k}": v for k, v in self.relight.state_dict().items()})
        return tensors

    def export_model_config(self) -> dict[str, Any]:
        """Return the segmenter's config, plus ``relight`` (DCE-Net config) when relighting is on."""
        config = dict(self.model.config)
        if self.relight is not None:
            config["relight"] = dict(self.relight.config)
        return config


def build(cfg: Config) -> ULCA:
    """Return the ULCA LightningModule for `cfg`."""
    return ULCA(cfg)


__all__ = ["ULCA", "Params", "build", "load_relight"]

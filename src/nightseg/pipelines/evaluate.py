"""Scoring a checkpoint on a labelled dataset split: mIoU, per-class IoU, mEF1, exposure bins and UIoU
(`nightseg evaluate`, the demo, NightLab's hard-class selection and the benchmarks)."""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from nightseg.core.classes import NUM_CLASSES
from nightseg.core.errors import UserError
from nightseg.core.io import json_safe, prefetch
from nightseg.data.common import to_contract
from nightseg.evaluation.exposure import DEFAULT_AVERAGE, ExposureConfusion, exposure_scores, masked_label
from nightseg.evaluation.metrics import ConfusionMatrix, segmentation_scores
from nightseg.evaluation.uncertainty import UncertaintyConfusion
from nightseg.inference import Predictor


def inference_settings(segmenter: Predictor) -> dict[str, Any]:
    """Return how `segmenter` actually runs, for a report's settings: ``backend``, ``sliding`` (False for
    whole-image inference, else ``{"window", "stride", "blend"}``: also when it came from an imported
    checkpoint's metadata rather than ``--sliding``) and ``tta`` (``"none"`` or e.g. ``"flip,0.75,1,1.25"``)."""
    sliding: bool | dict[str, Any] = False
    if segmenter.sliding is not None:
        sw = segmenter.sliding
        sliding = {"window": list(sw.window), "stride": list(sw.stride), "blend": sw.blend}
    tta = segmenter.tta
    spec = ",".join((["flip"] if tta.flip else []) + ([f"{s:g}" for s in tta.scales] if tuple(tta.scales) != (1.0,) else []))
    return {"backend": segmenter.backend, "sliding": sliding, "tta": spec or "none"}


def evaluate_dataset(
    segmenter: Predictor,
    dataset: Any,
    invalid_threshold: float = 0.5,
    average: str = DEFAULT_AVERAGE,
    limit: int | None = None,
    skip_bad: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Return the JSON-safe scores of `segmenter` on a `nightseg.data` dataset (see the module docstring).

    Keys: the `segmentation_scores` keys over all labelled pixels (the benchmark's IoU: Dark Zurich / ACDC
    score invalid regions with their daytime-derived labels), ``exposure`` (`exposure_scores` over the valid
    labelled pixels only: invalid-mask pixels are in no exposure bin, `masked_label`, exactly as training
    validation and ``nightseg eval --invalid`` count them),
    ``confusion_matrix``, ``num_images``, ``skipped`` and, with invalid masks, ``uncertainty``:
    ``{"threshold", "mUIoU", "average_mUIoU", "mIoU_valid", "invalid_share", "per_class", "curve"}``.
    """
    if segmenter.num_classes != NUM_CLASSES:
        raise UserError(f"the model predicts {segmenter.num_classes} classes; {type(dataset).__name__} is scored on the "
                        f"{NUM_CLASSES} Cityscapes classes")
    if not getattr(dataset, "listing", None) or not dataset.listing.labelled:
        raise UserError(f"{getattr(dataset, 'root', dataset)}: this split has no labels to score against")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    exposure = ExposureConfusion(NUM_CLASSES)
    annotated = ConfusionMatrix(NUM_CLASSES)  # every labelled pixel, invalid regions included: the benchmark's IoU
    uncertainty = UncertaintyConfusion(NUM_CLASSES)
    has_invalid = False
    skipped: list[str] = []

    def load(index: int) -> tuple[dict[str, Any] | None, UserError | None]:
        try:
            return to_contract(dataset.apply_transform(dataset.load(index))), None
        except UserError as exc:
            return None, exc

    for sample, error in tqdm(prefetch(load, range(count), workers), total=count, desc="evaluate", unit="img",
                              disable=None if progress else True, dynamic_ncols=True):
        if error is not None:
            if not skip_bad:
                raise error
            skipped.append(str(error))
            continue
        assert sample is not None
        pred = segmenter.predict_batch([sample["image"]], return_confidence=True)[0]
        labels = torch.from_numpy(pred.labels)
        target = sample["label"]
        annotated.update(labels, target)
        exposure.update(labels, masked_label(sample), sample["image"])
        if "invalid" in sample:
            has_invalid = True
            uncertainty.update(labels, target, sample["invalid"], torch.from_numpy(pred.confidence))
    processed = count - len(skipped)
    if processed == 0:
        raise UserError(f"{getattr(dataset, 'root', '')}: no sample could be scored")
    results: dict[str, Any] = {"num_images": processed, "skipped": len(skipped)}
    results.update(segmentation_scores(annotated))
    results["exposure"] = exposure_scores(exposure, average)  # type: ignore[arg-type]
    results["confusion_matrix"] = annotated.counts.tolist()
    if has_invalid:
        at = uncertainty.scores(invalid_threshold)
        valid_only = segmentation_scores(uncertainty.counts_at(0.0)[0])
        results["uncertainty"] = {
            "threshold": invalid_threshold,
            "mUIoU": at["mUIoU"],
            "average_mUIoU": uncertainty.average_uiou(),
            "mIoU_valid": valid_only["mIoU"],
            "invalid_share": at["invalid_share"],
            "true_invalid": at["true_invalid"],
            "false_invalid": at["false_invalid"],
            "per_class": at["per_class"],
            "curve": uncertainty.curve(),
        }
    return json_safe(results)

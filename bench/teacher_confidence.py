"""How right the mean teacher's pseudo labels are above a confidence threshold, per class.

The evidence behind ``ulca_st``'s ``self_training.weighting`` (docs/methods.md, "ULCA with a mean teacher"):
DACS weights *every* teacher-labelled pixel by the share q of confident pixels, so the teacher's unconfident
labels are trained too. This script takes a self-training run's last EMA teacher (from its training state,
``state_dict/teacher.net.*``), predicts a labelled night split, and prints for each threshold the share of
pixels kept, the accuracy of the kept labels, the share of the wrong labels removed, and per class how many
of that class's wrongly labelled pixels stay and how many of its rightly labelled ones are kept.

    python bench/teacher_confidence.py runs/benchmark_8x_converged_1800/ulca_st_jitter_seed2 \
        --dataset nightcity --root runs/benchmark_8x_ft1800/data/NightCity --split train

Use a training split (NightCity train is the oracle's labelled night set): the night val split is the
benchmark's test set. Validation has no day image, so the teacher predicts without the cross attention's
day features and without the day correction of the static classes that training uses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from nightseg.core.checkpoint import load_checkpoint, save_checkpoint
from nightseg.core.classes import CLASS_NAMES, IGNORE_INDEX
from nightseg.core.training_state import load_state
from nightseg.data import build_dataset
from nightseg.engine import RunDir
from nightseg.inference.predictor import Predictor

THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.968)
CLASSES = ("person", "car", "truck", "bus", "train")
TEACHER = "teacher.net."


def teacher_checkpoint(run_dir: Path, out: Path) -> Path:
    """Write the run's last EMA teacher as a model checkpoint at `out` (the student's ``last`` checkpoint with
    every tensor that the teacher has replaced by the teacher's) and return its path."""
    student_file = RunDir(run_dir).last
    tensors, meta = load_checkpoint(student_file)
    weights = load_state(run_dir / "state")["state_dict"]
    teacher = {key[len(TEACHER):]: value for key, value in weights.items() if key.startswith(TEACHER)}
    if not teacher:
        raise SystemExit(f"{run_dir}/state: no teacher weights (teacher.net.*); is this a self-training run?")
    out_tensors = {key: teacher.get(key, value) for key, value in tensors.items()}
    meta = {key: value for key, value in meta.items() if key != "sha256"}
    meta["source"] = f"EMA teacher of {run_dir} at step {meta.get('step')}"
    return save_checkpoint(out, out_tensors, meta)


def threshold_table(confidence: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor,
                    thresholds: tuple[float, ...] = THRESHOLDS, classes: tuple[str, ...] = CLASSES
                    ) -> list[dict[str, float]]:
    """Return one row per threshold t of flat pixel arrays: ``kept`` (share with confidence >= t), ``accuracy``
    (of the kept labels), ``wrong_removed`` (share of the wrong labels below t), and per class c
    ``<c>/wrong_kept`` (of the pixels of true class c labelled wrongly, the share kept) and ``<c>/right_kept``
    (of those labelled right, the share kept). Ignored truth pixels are left out; empty sets give nan."""
    valid = truth != IGNORE_INDEX
    confidence, prediction, truth = confidence[valid], prediction[valid], truth[valid]
    right = prediction == truth

    def share(part: torch.Tensor, whole: torch.Tensor) -> float:
        n = int(whole.sum())
        return float((part & whole).sum()) / n if n else float("nan")

    rows = []
    for t in thresholds:
        keep = confidence >= t
        row = {"threshold": t, "kept": share(keep, torch.ones_like(keep)), "accuracy": share(right, keep),
               "wrong_removed": share(~keep, ~right)}
        for name in classes:
            here = truth == CLASS_NAMES.index(name)
            row[f"{name}/wrong_kept"] = share(keep, here & ~right)
            row[f"{name}/right_kept"] = share(keep, here & right)
        rows.append(row)
    return rows


def predict_split(checkpoint: Path, dataset: str, root: Path, split: str, limit: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the flat (confidence, predicted class, true class) of every pixel of a labelled split."""
    predictor = Predictor.from_checkpoint(checkpoint)
    data = build_dataset(dataset, root, split)
    n = len(data) if limit is None else min(limit, len(data))
    confidence, prediction, truth = [], [], []
    for i in tqdm(range(n), desc="teacher", unit="image"):
        sample = data[i]
        probs = predictor.probabilities(sample["image"][None].float())[0]
        top, label = probs.max(dim=0)
        confidence.append(top.flatten())
        prediction.append(label.flatten())
        truth.append(torch.as_tensor(sample["label"]).long().flatten())
    return torch.cat(confidence), torch.cat(prediction), torch.cat(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a self-training run folder (with state/)")
    parser.add_argument("--dataset", default="nightcity")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = teacher_checkpoint(args.run, Path(tmp) / "teacher.safetensors")
        rows = threshold_table(*predict_split(checkpoint, args.dataset, args.root, args.split, args.limit))
    head = ["threshold", "kept", "accuracy", "wrong_removed", *(f"{c}/wrong_kept" for c in CLASSES),
            *(f"{c}/right_kept" for c in CLASSES)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.3f}" for k in head) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

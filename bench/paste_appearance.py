"""How night-like do the pasted source objects of ``ulca_st`` look? (issue 20, docs/results.md)

``ulca_st`` pastes labelled source (day) objects onto night images. Its ``paste_style`` decides how they
look: as they are (``day``), night-styled with FDA (``fda``), rendered at night by a CycleGAN
(``translate``), or colour-jittered class by class after relighting (``jitter``). This script measures, per class and over the labelled val frames of the synthetic set,
what a student sees (every image relit by the benchmark's Zero-DCE):

* brightness: mean HSV value V = max(R, G, B);
* colourfulness: mean HSV saturation (max - min) / max;
* texture: mean absolute 3x3 Laplacian of the grey image (lit windows and headlights are high-frequency);

for night frames (the target), day frames (``day``), day frames with FDA toward the night frame of the same
index (``fda``, beta 0.05), day frames through the translator's ``G_day2night`` (``translate``) and relit day
frames with `region_jitter` (``jitter``, ulca_st's default ranges, seed 0). A paste style helps the dynamic
classes only if it moves these toward the night column. Means hide spread, which is what ``jitter`` adds, so a
second table counts, per class, the share of the style's objects (one class in one frame, >= 20 pixels) whose
mean V and S both lie within 0.1 of the night frames' class mean: how often a pasted object looks like a night
one. Prints both Markdown tables and writes a bar chart.

    python bench/paste_appearance.py --data runs/benchmark_8x_ft1800/data \
        --relight runs/benchmark_8x_ft1800/relight/zero_dce.safetensors \
        --translator runs/benchmark_8x_converged/translator/translator.safetensors \
        --figure docs/images/paste_appearance.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

CLASSES = ("road", "building", "vegetation", "sky", "person", "car", "truck", "bus")
STYLES = ("night", "day", "fda", "translate", "jitter")
TOLERANCE = 0.1
MIN_PIXELS = 20
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def load_split(name: str, root: Path, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the first `limit` images ``[N,3,H,W]`` in [0,1] and train-id labels ``[N,H,W]`` of a split."""
    from nightseg.data.registry import build_dataset

    dataset = build_dataset(name, root, split)
    samples = [dataset[i] for i in range(min(limit, len(dataset)))]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["label"] for s in samples])


def appearance(images: torch.Tensor, labels: torch.Tensor) -> dict[str, dict[str, float]]:
    """Return ``{class: {"value", "saturation", "texture", "pixels"}}``: the class's mean HSV value, saturation
    and absolute Laplacian of the grey image over its pixels (one-pixel border left out)."""
    from nightseg.core.classes import CLASS_NAMES

    top, bottom = images.max(dim=1).values, images.min(dim=1).values
    saturation = (top - bottom) / top.clamp_min(1e-6)
    grey = images.mean(dim=1, keepdim=True)
    texture = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), LAPLACIAN).abs()[:, 0]
    inner = torch.zeros_like(labels, dtype=torch.bool)
    inner[:, 1:-1, 1:-1] = True
    out = {}
    for name in CLASSES:
        mask = (labels == CLASS_NAMES.index(name)) & inner
        if mask.sum() == 0:
            continue
        out[name] = {"value": float(top[mask].mean()), "saturation": float(saturation[mask].mean()),
                     "texture": float(texture[mask].mean()), "pixels": int(mask.sum())}
    return out


def objects(images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[tuple[float, float]]]:
    """Return ``{class: [(V, S), ...]}``: the mean HSV value and saturation of each class in each frame where it
    has at least `MIN_PIXELS` pixels."""
    from nightseg.core.classes import CLASS_NAMES

    top, bottom = images.max(dim=1).values, images.min(dim=1).values
    saturation = (top - bottom) / top.clamp_min(1e-6)
    out: dict[str, list[tuple[float, float]]] = {}
    for name in CLASSES:
        found = []
        for i in range(len(images)):
            mask = labels[i] == CLASS_NAMES.index(name)
            if int(mask.sum()) >= MIN_PIXELS:
                found.append((float(top[i][mask].mean()), float(saturation[i][mask].mean())))
        out[name] = found
    return out


def night_like_share(style: list[tuple[float, float]], night: tuple[float, float]) -> float | None:
    """Return the share of `style`'s objects ``(V, S)`` within `TOLERANCE` of the night mean in both (None if
    there are none)."""
    if not style:
        return None
    return sum(abs(v - night[0]) <= TOLERANCE and abs(s - night[1]) <= TOLERANCE for v, s in style) / len(style)


@torch.no_grad()
def measure(data: Path, relight_path: Path, translator_path: Path | None, limit: int, fda_beta: float = 0.05
            ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, float | None]]]:
    """Return ``({style: appearance(...)}, {style: {class: night_like_share}})`` for the night val frames and
    the day val images in each paste style."""
    from nightseg.data.photometric import fourier_style, region_jitter
    from nightseg.models.relight import load_dce_weights, relight
    from nightseg.models.translator import load_translator

    dce = load_dce_weights(relight_path)
    night, night_labels = load_split("dark_zurich", data / "dark_zurich", "val", limit)
    day, day_labels = load_split("cityscapes", data / "cityscapes", "val", limit)
    n = min(len(night), len(day))
    styled = {"night": (night, night_labels), "day": (day, day_labels),
              "fda": (torch.cat([fourier_style(day[i:i + 1], night[i % n:i % n + 1], fda_beta)
                                 for i in range(len(day))]), day_labels)}
    if translator_path is not None:
        net = load_translator(translator_path, "day2night")
        styled["translate"] = (torch.cat([net(day[i:i + 8]) for i in range(0, len(day), 8)]), day_labels)
    relit = {style: (relight(dce, images).float(), labels) for style, (images, labels) in styled.items()}
    relit["jitter"] = (region_jitter(relit["day"][0], day_labels, torch.Generator().manual_seed(0)), day_labels)
    means = {style: appearance(images, labels) for style, (images, labels) in relit.items()}
    shares = {}
    for style, (images, labels) in relit.items():
        found = objects(images, labels)
        shares[style] = {name: night_like_share(found[name], (means["night"][name]["value"],
                                                              means["night"][name]["saturation"]))
                         for name in CLASSES if name in means["night"]}
    return means, shares


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Return a Markdown table: one row per class, value / saturation / texture per style."""
    styles = [s for s in STYLES if s in results]
    head = "| class | " + " | ".join(f"{s}: V / S / texture" for s in styles) + " |"
    lines = [head, "|---" * (len(styles) + 1) + "|"]
    for name in CLASSES:
        cells = []
        for s in styles:
            r = results[s].get(name)
            cells.append(f"{r['value']:.2f} / {r['saturation']:.2f} / {r['texture']:.3f}" if r else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def share_table(shares: dict[str, dict[str, float | None]]) -> str:
    """Return a Markdown table: per class and style, the share (%) of objects that look like night ones."""
    styles = [s for s in STYLES if s in shares]
    lines = ["| class | " + " | ".join(styles) + " |", "|---" * (len(styles) + 1) + "|"]
    for name in CLASSES:
        cells = [("-" if shares[s].get(name) is None else f"{100 * shares[s][name]:.0f} %") for s in styles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    """Write grouped bars of brightness, saturation and texture per class and style to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = [s for s in STYLES if s in results]
    names = [c for c in CLASSES if all(c in results[s] for s in styles)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    width = 0.8 / len(styles)
    for ax, key, title in ((axes[0], "value", "brightness: HSV value (relit)"),
                           (axes[1], "saturation", "colourfulness: HSV saturation (relit)"),
                           (axes[2], "texture", "texture: mean |Laplacian| of grey (relit)")):
        for k, s in enumerate(styles):
            ax.bar([i + k * width for i in range(len(names))], [results[s][c][key] for c in names], width,
                   label={"night": "night frames (target)", "day": "day (paste_style: day)",
                          "fda": "day + FDA (paste_style: fda)",
                          "translate": "day -> night CycleGAN (paste_style: translate)",
                          "jitter": "day, jittered per class (paste_style: jitter)"}[s])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(styles), fontsize=9)
    fig.suptitle("What the student sees of each class: night frames vs pasted day objects in each paste style")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="synthetic set (nightseg synth)")
    parser.add_argument("--relight", type=Path, required=True, help="Zero-DCE weights the students relight with")
    parser.add_argument("--translator", type=Path, help="translator.safetensors (nightseg translate train)")
    parser.add_argument("--limit", type=int, default=60, help="frames per domain (default 60)")
    parser.add_argument("--figure", type=Path, help="bar chart to write (PNG)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    results, shares = measure(args.data, args.relight, args.translator, args.limit)
    print(table(results))
    print()
    print(f"objects within {TOLERANCE} of the night mean in V and S:")
    print(share_table(shares))
    if args.figure:
        plot(results, args.figure)
    if args.json:
        args.json.write_text(json.dumps({"means": results, "night_like_share": shares}, indent=1))


if __name__ == "__main__":
    main()

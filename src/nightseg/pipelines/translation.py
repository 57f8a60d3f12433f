"""Unpaired day <-> night translation with CycleGAN (Zhu et al., ICCV 2017), See Clearer at Night's image converter.

Domains: A = day, B = night. Generators ``G_day2night`` (A->B) and ``G_night2day`` (B->A), PatchGAN
discriminators ``D_day`` / ``D_night``. One training step (CycleGAN, Sec. 3-4; plain PyTorch):

* generators: ``L_G = L_gan(D_night(G_d2n(a)), 1) + L_gan(D_day(G_n2d(b)), 1)``
  ``+ lambda * (|G_n2d(G_d2n(a)) - a|_1 + |G_d2n(G_n2d(b)) - b|_1)`` (cycle, Eq. 2, lambda = 10)
  ``+ 0.5 * lambda * (|G_d2n(b) - b|_1 + |G_n2d(a) - a|_1)`` (identity, Sec. 5.2);
* discriminators: ``L_D = 0.5 * (L_gan(D(real), 1) + L_gan(D(pool(fake)), 0))`` each, fakes drawn from a
  50-image history pool; ``L_gan(p, t) = mean((p - t)^2)`` (least squares, Mao et al.; CycleGAN Sec. 4).

Adam (lr 2e-4, betas 0.5/0.999) for both, lr constant for the first half of the steps, then linearly to
0 (CycleGAN's 100 + 100 epochs, counted in steps). Images are in [-1, 1] inside the loop (as the official
code), so the L1 terms have CycleGAN's scale. Training state (all four nets, both Adam states, both
image pools, loss history) is saved atomically with `nightseg.core.loop_state.save_loop_state`; every
random draw of step ``t`` comes from a generator seeded by ``(seed, t)``, so a resumed run gives the same
weights as an uninterrupted one. The generators alone are written to ``OUT/translator.safetensors``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from nightseg.core.checkpoint import save_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.io import read_image, write_png
from nightseg.core.loop_state import load_loop_state, save_loop_state, state_step
from nightseg.core.schedule import linear_decay_factor
from nightseg.models.translator import (
    TRANSLATOR_NAME,
    ImagePool,
    PatchDiscriminator,
    ResnetGenerator,
    UnitRangeTranslator,
    init_weights,
)

log = logging.getLogger("nightseg")

CHECKPOINT_NAME = "translator.safetensors"
STATE_DIR = "state"
SAMPLES_DIR = "samples"
NETS = ("G_day2night", "G_night2day", "D_day", "D_night")


# --------------------------------------------------------------------------------------------- losses
def lsgan_loss(prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Return the least-squares GAN loss mean((D(x) - t)^2), t = 1 for real, 0 for fake (Mao et al., Eq. 2)."""
    target = 1.0 if target_is_real else 0.0
    return F.mse_loss(prediction, torch.full_like(prediction, target))


def discriminator_loss(real_prediction: torch.Tensor, fake_prediction: torch.Tensor) -> torch.Tensor:
    """Return 0.5 * (L_gan(D(real), 1) + L_gan(D(fake), 0)), CycleGAN's halved discriminator objective."""
    return 0.5 * (lsgan_loss(real_prediction, True) + lsgan_loss(fake_prediction, False))


def cycle_loss(real: torch.Tensor, reconstructed: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """Return lambda * |F(G(x)) - x|_1 (mean absolute error), one direction of CycleGAN's Eq. 2."""
    return weight * (reconstructed - real).abs().mean()


def identity_loss(real: torch.Tensor, same: torch.Tensor, weight: float = 10.0, scale: float = 0.5) -> torch.Tensor:
    """Return scale * lambda * |G(y) - y|_1, CycleGAN's identity loss (Sec. 5.2, default scale 0.5)."""
    return scale * weight * (same - real).abs().mean()


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TranslatorSettings:
    """Architecture and schedule of one translator training run (all of it is saved with the state)."""

    steps: int = 1000
    size: tuple[int, int] = (64, 128)
    crop: tuple[int, int] | None = None
    """Random crop HxW taken from the `size`-resized image (CycleGAN's ``resize_and_crop``: train on patches,
    apply to whole frames at the same scale); None trains on whole images."""
    batch_size: int = 1
    channels: int = 32
    blocks: int = 6
    disc_channels: int = 32
    disc_layers: int = 3
    lr: float = 2e-4
    beta1: float = 0.5
    cycle_weight: float = 10.0
    identity_scale: float = 0.5
    pool_size: int = 50
    decay_start: float = 0.5
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Return the learning rate of step `step` (0-based): constant, then linear to 0 (CycleGAN's 'linear',
        `nightseg.core.schedule.linear_decay_factor`)."""
        return self.lr * linear_decay_factor(step, self.steps, int(self.steps * self.decay_start))


def _settings_json(s: TranslatorSettings) -> dict[str, Any]:
    d = asdict(s)
    d["size"] = list(s.size)
    if s.crop is None:  # states saved before the crop option existed stay resumable
        del d["crop"]
    else:
        d["crop"] = list(s.crop)
    return d


# --------------------------------------------------------------------------------------------- data
def load_training_image(path: Path, size: tuple[int, int], flip: bool) -> torch.Tensor:
    """Return the image at `path` resized to `size` (HxW), optionally mirrored, as [3,H,W] in [-1, 1]."""
    img = Image.fromarray(read_image(path))
    if (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.BICUBIC)
    arr = np.asarray(img)
    if flip:
        arr = arr[:, ::-1]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def random_crop(images: torch.Tensor, crop: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Return one `crop`-sized (HxW) window of each image of ``[B,3,H,W]`` `images`, offsets drawn from `g`."""
    (h, w), (ch, cw) = images.shape[-2:], crop
    if ch > h or cw > w:
        raise UserError(f"translate train: crop {ch}x{cw} is larger than the training size {h}x{w}")
    tops = torch.randint(0, h - ch + 1, (len(images),), generator=g).tolist()
    lefts = torch.randint(0, w - cw + 1, (len(images),), generator=g).tolist()
    return torch.stack([im[:, t:t + ch, x:x + cw] for im, t, x in zip(images, tops, lefts)])


def _draw(paths: list[Path], s: TranslatorSettings, g: torch.Generator) -> torch.Tensor:
    index = torch.randint(0, len(paths), (s.batch_size,), generator=g).tolist()
    flips = (torch.rand(s.batch_size, generator=g) < 0.5).tolist()
    images = torch.stack([load_training_image(paths[i], s.size, f) for i, f in zip(index, flips)])
    return images if s.crop is None else random_crop(images, s.crop, g)


# --------------------------------------------------------------------------------------------- model
class CycleGAN(torch.nn.Module):
    """The four networks of a translator run, built and initialised from `settings` (seeded)."""

    def __init__(self, s: TranslatorSettings) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(s.seed)
        self.G_day2night = init_weights(ResnetGenerator(s.channels, s.blocks), g)
        self.G_night2day = init_weights(ResnetGenerator(s.channels, s.blocks), g)
        self.D_day = init_weights(PatchDiscriminator(s.disc_channels, s.disc_layers), g)
        self.D_night = init_weights(PatchDiscriminator(s.disc_channels, s.disc_layers), g)

    def generator_params(self) -> list[torch.nn.Parameter]:
        return [*self.G_day2night.parameters(), *self.G_night2day.parameters()]

    def discriminator_params(self) -> list[torch.nn.Parameter]:
        return [*self.D_day.parameters(), *self.D_night.parameters()]


def training_step(
    nets: CycleGAN, day: torch.Tensor, night: torch.Tensor, opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer, pools: dict[str, ImagePool], s: TranslatorSettings, g: torch.Generator,
) -> dict[str, float]:
    """Run one CycleGAN step (generators, then discriminators) on a day and a night batch in [-1,1].

    Returns the loss terms as floats (see the module docstring for the equations).
    """
    fake_night = nets.G_day2night(day)
    rec_day = nets.G_night2day(fake_night)
    fake_day = nets.G_night2day(night)
    rec_night = nets.G_day2night(fake_day)
    nets.D_day.requires_grad_(False)
    nets.D_night.requires_grad_(False)
    adv = lsgan_loss(nets.D_night(fake_night), True) + lsgan_loss(nets.D_day(fake_day), True)
    cyc = cycle_loss(day, rec_day, s.cycle_weight) + cycle_loss(night, rec_night, s.cycle_weight)
    idt = torch.zeros(())
    if s.identity_scale > 0:
        idt = (identity_loss(night, nets.G_day2night(night), s.cycle_weight, s.identity_scale)
               + identity_loss(day, nets.G_night2day(day), s.cycle_weight, s.identity_scale))
    loss_g = adv + cyc + idt
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()

    nets.D_day.requires_grad_(True)
    nets.D_night.requires_grad_(True)
    pooled_night = pools["night"].query(fake_night.detach(), g)
    pooled_day = pools["day"].query(fake_day.detach(), g)
    loss_d_night = discriminator_loss(nets.D_night(night), nets.D_night(pooled_night))
    loss_d_day = discriminator_loss(nets.D_day(day), nets.D_day(pooled_day))
    opt_d.zero_grad(set_to_none=True)
    (loss_d_night + loss_d_day).backward()
    opt_d.step()
    terms = {"G_adv": adv, "cycle": cyc, "identity": idt, "D_day": loss_d_day, "D_night": loss_d_night}
    return {k: float(v.detach()) for k, v in terms.items()}


# --------------------------------------------------------------------------------------------- saving
def _adam(params: list[torch.nn.Parameter], s: TranslatorSettings) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=s.lr, betas=(s.beta1, 0.999))


def save_translator(nets: CycleGAN, path: Path, s: TranslatorSettings, training: dict[str, Any]) -> Path:
    """Write both generators to `path` (.safetensors + .json) as `load_translator` reads them; return it."""
    tensors = {f"G_day2night.{k}": v for k, v in nets.G_day2night.state_dict().items()}
    tensors |= {f"G_night2day.{k}": v for k, v in nets.G_night2day.state_dict().items()}
    meta = {"model": {"name": TRANSLATOR_NAME, "generator": nets.G_day2night.config,
                      "discriminator": nets.D_day.config},
            "settings": _settings_json(s), "training": training}
    return save_checkpoint(path, tensors, meta)


@torch.no_grad()
def sample_grid(nets: CycleGAN, day: torch.Tensor, night: torch.Tensor) -> np.ndarray:
    """Return an HxWx3 uint8 grid: rows ``day | day->night | reconstructed day`` then the same for night."""
    nets.eval()
    rows = []
    for real, fwd, back in ((day, nets.G_day2night, nets.G_night2day), (night, nets.G_night2day, nets.G_day2night)):
        fake = fwd(real)
        rows += [torch.cat([a, b, c], dim=2) for a, b, c in zip(real, fake, back(fake))]
    nets.train()
    grid = torch.cat([F.pad(r, (2, 2, 2, 2), value=1.0) for r in rows], dim=1)
    return ((grid.clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()


def translator_path(out: Path) -> Path:
    """Return the generator checkpoint path of the run folder `out`."""
    return Path(out) / CHECKPOINT_NAME


# --------------------------------------------------------------------------------------------- training
def train_translator(
    day: list[Path], night: list[Path], out: str | Path, s: TranslatorSettings, resume: bool = True,
    sample_every: int = 100, save_every: int = 100, log_every: int = 10, progress: bool = True,
) -> dict[str, Any]:
    """Train (or finish training) a CycleGAN translator from unpaired `day` and `night` image lists.

    Writes ``out/translator.safetensors`` (generators), ``out/state/`` (full training state, every
    `save_every` steps and at the end) and ``out/samples/step_*.png`` (every `sample_every` steps).
    Returns ``{"steps", "history", "seconds_per_step"}``.
    """
    import time

    out = Path(out)
    if not day or not night:
        raise UserError(f"translate train: need day and night images, got {len(day)} day and {len(night)} night")
    if s.crop is not None and (s.crop[0] > s.size[0] or s.crop[1] > s.size[1] or min(s.crop) < 16):
        raise UserError(f"translate train: crop {s.crop[0]}x{s.crop[1]} must fit in the training size "
                        f"{s.size[0]}x{s.size[1]} and be at least 16x16")
    if s.steps < 1 or s.batch_size < 1 or min(s.size) < 16:
        raise UserError(f"translate train: steps {s.steps}, batch size {s.batch_size} and size {s.size} must be positive "
                        "(size at least 16x16)")
    nets = CycleGAN(s)
    opt_g, opt_d = _adam(nets.generator_params(), s), _adam(nets.discriminator_params(), s)
    pools = {"day": ImagePool(s.pool_size), "night": ImagePool(s.pool_size)}
    start, history = 0, []
    state_dir = out / STATE_DIR
    if state_step(state_dir) is not None:
        if not resume:
            raise UserError(f"{state_dir}: a training state exists; pass --resume to continue it or choose a new --out")
        start, extra = load_loop_state(state_dir, {name: getattr(nets, name) for name in NETS},
                                       {"opt_G": opt_g, "opt_D": opt_d}, settings=_settings_json(s))
        pools["day"].load(extra["pool_day"])
        pools["night"].load(extra["pool_night"])
        history = list(extra["history"])
        log.info("resuming %s at step %d", out, start)

    fixed = torch.Generator().manual_seed(s.seed + 7)
    sample_day = torch.stack([load_training_image(day[i], s.size, False)
                              for i in torch.randperm(len(day), generator=fixed)[:3].tolist()])
    sample_night = torch.stack([load_training_image(night[i], s.size, False)
                                for i in torch.randperm(len(night), generator=fixed)[:3].tolist()])

    def save(step: int) -> None:
        """Write the loop state and the generators after `step` steps; return nothing."""
        save_loop_state(state_dir, step, {name: getattr(nets, name) for name in NETS},
                        {"opt_G": opt_g, "opt_D": opt_d}, settings=_settings_json(s),
                        extra={"history": history, "pool_day": pools["day"].state(),
                               "pool_night": pools["night"].state()})
        save_translator(nets, translator_path(out), s, {"steps_done": step, "history": history[-1:]})

    nets.train()
    sums: dict[str, float] = {}
    started = time.perf_counter()
    bar = tqdm(total=s.steps, initial=start, desc="translate train", unit="step", dynamic_ncols=True,
               disable=None if progress else True)
    for step in range(start, s.steps):
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = s.lr_at(step)
        parts = training_step(nets, _draw(day, s, g), _draw(night, s, g), opt_g, opt_d, pools, s, g)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        done = step + 1
        if done % log_every == 0 or done == s.steps:
            n = (done - 1) % log_every + 1
            history.append({"step": done, **{k: round(v / n, 5) for k, v in sums.items()}})
            sums = {}
            bar.set_postfix(G=f"{parts['G_adv']:.3f}", cyc=f"{parts['cycle']:.3f}", D=f"{parts['D_night']:.3f}")
        if sample_every and (done % sample_every == 0 or done == s.steps):
            write_png(out / SAMPLES_DIR / f"step_{done:06d}.png", sample_grid(nets, sample_day, sample_night))
        if done % save_every == 0 or done == s.steps:
            save(done)
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - started
    if start == s.steps and not translator_path(out).is_file():
        save(s.steps)
    return {"steps": s.steps, "history": history,
            "seconds_per_step": elapsed / max(1, s.steps - start) if s.steps > start else None}


# --------------------------------------------------------------------------------------------- applying
@torch.no_grad()
def translate_array(net: UnitRangeTranslator, image: np.ndarray) -> np.ndarray:
    """Return the HxWx3 uint8 translation of the HxWx3 uint8 `image` by a [0,1] translator."""
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    y = net(x)[0]
    return (y * 255.0 + 0.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------- datasets
MANIFEST = "translation_manifest.json"


@dataclass(frozen=True)
class DatasetLayout:
    """Where one loader's layout keeps a split's images and labels (relative to the dataset root)."""

    name: str
    image_dir: str  # format fields: split, condition
    label_dir: str
    image_suffix: str
    direction: str  # the default direction: towards the other domain of the layout's images
    split: str  # the default split
    labels_required: tuple[str, ...]  # splits whose label folder must exist (the loader reads it)

    def folders(self, root: Path, split: str, condition: str) -> tuple[Path, Path]:
        """Return (image folder, label folder) of `split` under `root`."""
        return (root / self.image_dir.format(split=split, condition=condition),
                root / self.label_dir.format(split=split, condition=condition))


LAYOUTS = {
    "cityscapes": DatasetLayout("cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                                "day2night", "train", ("train", "val", "test")),
    "dark_zurich": DatasetLayout("dark_zurich", "rgb_anon/{split}/{condition}", "gt/{split}/{condition}",
                                 "_rgb_anon.png", "night2day", "val", ("val",)),
}


def chosen_for_translation(names: list[str], ratio: float, seed: int) -> set[str]:
    """Return the round(ratio * N) names (of N) picked by a seeded permutation: the images to translate."""
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"--ratio {ratio}: must be in [0, 1]")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return {sorted(names)[i] for i in order[: round(ratio * len(names))]}


def translate_dataset(
    checkpoint: str | Path, src: str | Path, dst: str | Path, ratio: float, seed: int = 0, split: str | None = None,
    direction: str | None = None, layout: str = "cityscapes", condition: str = "night", progress: bool = True,
) -> dict[str, Any]:
    """Write a copy of one split of a `layout` dataset with a share `ratio` of its images translated.

    Layouts (`LAYOUTS`; the copy has the same names, so the layout's loader reads `dst`):

    * ``cityscapes`` (See Clearer at Night, method 2; default direction day2night, split train):
      ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` translated or copied, ``gtFine/<split>/`` copied;
    * ``dark_zurich`` (default direction night2day, split val, `condition` night):
      ``rgb_anon/<split>/<condition>/<SEQ>/*_rgb_anon.png`` translated or copied, ``gt/<split>/<condition>/``
      (labelTrainIds, invIds, ...) copied; required for val, copied when present otherwise.

    Resumable and self-repairing: ``dst/translation_manifest.json`` records the layout, checkpoint,
    direction, ratio, seed, split (and condition) and the translated names, and a rerun with other
    settings is refused. Every rerun writes exactly the outputs that are missing (an interrupted run's
    rest, or files deleted since) and leaves existing ones untouched: every file is written atomically,
    so an existing file is complete. The translator is loaded only if some translated image is missing.
    Returns the manifest plus ``"written"``, the number of files this call wrote.
    """
    import json
    import shutil

    from nightseg.core.io import atomic_path, write_json
    from nightseg.models.translator import DIRECTIONS, load_translator

    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: expected one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    split = split or spec.split
    direction = direction or spec.direction
    if direction not in DIRECTIONS:
        raise UserError(f"--direction {direction}: expected one of {', '.join(DIRECTIONS)}")
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise UserError(f"--out {dst}: must differ from the source set {src} (its images would be overwritten)")
    image_dir, label_dir = spec.folders(src, split, condition)
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: not found; --src must be a {layout}-layout root holding "
                        f"{spec.image_dir.format(split=split, condition=condition)}/")
    if split in spec.labels_required and not label_dir.is_dir():
        raise UserError(f"{label_dir}: not found; the {layout} loader reads the {split} labels from "
                        f"{spec.label_dir.format(split=split, condition=condition)}/ under --src")
    images = sorted(p for p in image_dir.rglob(f"*{spec.image_suffix}") if not p.name.startswith("."))
    if not images:
        raise UserError(f"{image_dir}: no *{spec.image_suffix} images found")
    rels = [p.relative_to(image_dir).as_posix() for p in images]
    chosen = chosen_for_translation(rels, ratio, seed)
    manifest: dict[str, Any] = {"layout": layout, "source": str(src.resolve()), "split": split}
    if layout == "dark_zurich":
        manifest["condition"] = condition
    manifest |= {"checkpoint": str(Path(checkpoint).resolve()), "direction": direction, "ratio": ratio,
                 "seed": seed, "images": len(rels), "translated": sorted(chosen)}
    manifest_path = dst / MANIFEST
    was_complete = False
    if manifest_path.is_file():
        old = {"layout": "cityscapes", **json.loads(manifest_path.read_text())}  # older manifests: Cityscapes only
        was_complete = bool(old.get("complete"))
        if {k: v for k, v in old.items() if k != "complete"} != manifest:
            raise UserError(f"{manifest_path}: this folder was made with other settings (layout, checkpoint, direction, "
                            "ratio, seed, split or condition); choose another --out or delete it")
    out_images, out_labels = spec.folders(dst, split, condition)
    labels = sorted(p for p in label_dir.rglob("*") if p.is_file() and not p.name.startswith(".")) \
        if label_dir.is_dir() else []
    copies = [(p, t) for p in labels if not (t := out_labels / p.relative_to(label_dir)).is_file()]
    todo = [(p, rel, t) for p, rel in zip(images, rels) if not (t := out_images / rel).is_file()]
    if was_complete and not (copies or todo):
        return {**old, "written": 0}
    write_json(manifest_path, manifest)  # not complete until every file below exists
    net = load_translator(checkpoint, direction) if any(rel in chosen for _, rel, _ in todo) else None
    for path, target in copies:
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
    for path, rel, target in tqdm(todo, desc=f"translate {split} (r={ratio:g})", unit="img", dynamic_ncols=True,
                                  disable=None if progress and todo else True):
        if rel in chosen:
            write_png(target, translate_array(net, read_image(path)))
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    return {**manifest, "written": len(copies) + len(todo)}


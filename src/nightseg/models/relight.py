"""Zero-DCE relighting (Guo et al., "Zero-Reference Deep Curve Estimation for Low-Light Image
Enhancement", CVPR 2020), the image relighting network g of ULCA (Fig. 1, weights kept fixed).

DCE-Net: seven 3x3 convs with 32 channels and symmetric skip concatenations (conv5 sees [x3, x4], conv6
[x2, x5], conv7 [x1, x6]); tanh on conv7 gives 8 curve maps x 3 channels A_n. Each is applied as the
light-enhancement curve LE(x) = x + A_n * (x^2 - x) (paper Sec. 3.1; the paper writes x + A x (1 - x), the same curve with A negated), 8 times. Parameter names match the
official checkpoint (``e_conv1`` .. ``e_conv7``), so ``Epoch99.pth`` loads as is.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nightseg.core.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from nightseg.core.errors import UserError
from nightseg.core.io import atomic_path

ITERATIONS = 8
WEIGHTS_ENV = "NIGHTSEG_RELIGHT_WEIGHTS"
OFFICIAL = "official"
"""Weights name that means the official Zero-DCE ``Epoch99.pth`` (downloaded once into the torch hub cache)."""
OFFICIAL_URL = (
    "https://github.com/Li-Chongyi/Zero-DCE/raw/43f9da935d55758d93b54a47ce5872c96b342668/"
    "Zero-DCE_code/snapshots/Epoch99.pth"
)
OFFICIAL_SHA256 = "a4395acb874f320375d9704997cef874eaaaaa26a1777ceb29a92b70f74c3612"
MODEL_CONFIG = {"name": "zero_dce", "iterations": ITERATIONS, "channels": 32}


def apply_curves(x: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Return x after the iterated curves LE_n(x) = LE_{n-1} + A_n (LE_{n-1}^2 - LE_{n-1}) (Zero-DCE Sec. 3.1).

    `x` is [B,3,H,W] in [0,1]; `curves` is [B,3*n,H,W] with values in [-1,1], A_n = curves[:, 3n:3n+3].
    """
    for a in torch.split(curves, 3, dim=1):
        x = x + a * (x * x - x)
    return x


class DCENet(nn.Module):
    """DCE-Net (Zero-DCE, CVPR 2020, Fig. 2): estimates 8 pixel-wise RGB curve maps and applies them."""

    def __init__(
        self, channels: int = 32, iterations: int = ITERATIONS, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        c = channels
        self.e_conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.e_conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.e_conv3 = nn.Conv2d(c, c, 3, padding=1)
        self.e_conv4 = nn.Conv2d(c, c, 3, padding=1)
        self.e_conv5 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.e_conv6 = nn.Conv2d(2 * c, c, 3, padding=1)
        self.e_conv7 = nn.Conv2d(2 * c, 3 * iterations, 3, padding=1)
        self.config = {**MODEL_CONFIG, "channels": channels, "iterations": iterations}
        if generator is not None:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise as the official code does (weights N(0, 0.02), PyTorch's default bias), from `generator`."""
        with torch.no_grad():
            for conv in self.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.normal_(0.0, 0.02, generator=generator)
                    fan_in = conv.weight[0].numel()
                    bound = 1.0 / fan_in**0.5
                    conv.bias.uniform_(-bound, bound, generator=generator)

    def curve_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Return the curve parameter maps A = tanh(conv7(...)) [B, 3*iterations, H, W] for x in [0,1]."""
        x1 = F.relu(self.e_conv1(x))
        x2 = F.relu(self.e_conv2(x1))
        x3 = F.relu(self.e_conv3(x2))
        x4 = F.relu(self.e_conv4(x3))
        x5 = F.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = F.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        return torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))

    def enhance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (enhanced image, curve maps) for RGB x [B,3,H,W] in [0,1]."""
        curves = self.curve_maps(x)
        return apply_curves(x, curves), curves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the enhanced image for RGB x [B,3,H,W] in [0,1] (not clamped, as in the paper)."""
        return self.enhance(x)[0]


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the one-line error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have no common base class
        # one line, and never PyTorch's advice to retry with weights_only=False (that would run the file's code)
        text = str(exc)
        reason = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
        reason = next((line.strip() for line in reason.splitlines() if line.strip()), type(exc).__name__)
        if "weights_only" in reason:
            reason = "it holds objects other than tensors"
        raise UserError(f"{path}: not a plain PyTorch state dict of tensors ({type(exc).__name__}: {reason[:160]}); "
                        "NightSeg never unpickles other objects: give the official Zero-DCE Epoch99.pth or a "
                        ".safetensors file from `nightseg relight train`") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors (e.g. the official Zero-DCE Epoch99.pth)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_weights() -> Path:
    """Return the path of the official Zero-DCE ``Epoch99.pth`` in the torch hub cache, downloading it once.

    The download is checked against its SHA-256 and written atomically; offline it raises a UserError that
    says where to get the file by hand. The official weights are licensed CC BY-NC 4.0 (non-commercial).
    """
    target = Path(torch.hub.get_dir()) / "checkpoints" / "zero_dce_Epoch99.pth"
    if target.is_file():
        return target
    try:
        with atomic_path(target) as tmp:
            torch.hub.download_url_to_file(OFFICIAL_URL, str(tmp), hash_prefix=OFFICIAL_SHA256, progress=True)
    except Exception as exc:  # URLError, HTTPError, hash mismatch (RuntimeError), disk errors
        raise UserError(
            f"relighting weights {OFFICIAL!r}: could not download {OFFICIAL_URL} ({type(exc).__name__}: {exc}); "
            f"offline, download Epoch99.pth by hand and pass its path instead of {OFFICIAL!r}"
        ) from exc
    return target


def load_dce_weights(path: str | os.PathLike) -> DCENet:
    """Return an eval-mode DCENet with the weights at `path`.

    Accepts the official pickled checkpoint (``Epoch99.pth``, read with ``weights_only=True``), NightSeg
    ``.safetensors`` files written by `save_dce_weights` / ``nightseg relight train``, and the name
    ``"official"`` (the official weights, fetched by `official_weights`, unless a file of that name exists).
    """
    path = Path(path)
    if str(path) == OFFICIAL and not path.exists():
        path = official_weights()
    if not path.is_file():
        raise UserError(f"{path}: relighting weights not found")
    if path.suffix == ".safetensors":
        tensors, meta = load_checkpoint(path)
        config = meta.get("model", {})
        if config.get("name") != "zero_dce":
            raise UserError(
                f"{path}: checkpoint holds model {config.get('name')!r}, not Zero-DCE relighting weights"
            )
        model = DCENet(config.get("channels", 32), config.get("iterations", ITERATIONS))
    else:
        tensors = _load_pth(path)
        model = DCENet()
    load_state_into(model, tensors, path)
    return model.eval()


def save_dce_weights(model: DCENet, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Atomically write `model`'s weights to `path` (.safetensors + .json) and return the path."""
    return save_checkpoint(path, model.state_dict(), {"model": model.config, **(metadata or {})})


def resolve_weights(path: str | os.PathLike | None) -> Path:
    """Return `path`, else $NIGHTSEG_RELIGHT_WEIGHTS; raise a UserError saying how to get weights if neither."""
    if path:
        return Path(path)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    raise UserError(
        f"--weights: no relighting weights given; pass --weights (the official Zero-DCE Epoch99.pth, "
        f"'{OFFICIAL}' to download it, or a file from `nightseg relight train`) or set ${WEIGHTS_ENV}"
    )


def relight(net: nn.Module | None, images: torch.Tensor | np.ndarray, curve_scale: float = 1.0
            ) -> torch.Tensor | np.ndarray:
    """Return the relit images g(x) clamped to [0, 1]: ULCA's relighting step (seed Fig. 1, g frozen, no gradient).

    This is the one way NightSeg relights: training (ULCA), inference, ``nightseg relight apply`` and the demo.
    `images` is [B,3,H,W] float in [0,1] (a tensor of that shape is returned) or one HxWx3 uint8 RGB array
    (an HxWx3 uint8 array is returned). `net` is a `DCENet` (or any image-to-image net, e.g. a night->day
    generator); None returns the images unchanged. With ``curve_scale < 1`` the curve maps are estimated on a
    copy downscaled by that factor and upsampled before being applied at full resolution (Zero-DCE++'s speed-up).
    """
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(images).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        param = next(net.parameters(), None) if net is not None else None
        y = relight(net, x.to(param.device) if param is not None else x, curve_scale)
        return (y[0].permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if net is None:
        return images
    with torch.no_grad():
        x = images.float()
        if curve_scale >= 1.0:
            return net(x).clamp(0.0, 1.0)
        small = F.interpolate(x, scale_factor=curve_scale, mode="bilinear", align_corners=False)
        curves = F.interpolate(net.curve_maps(small), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return apply_curves(x, curves).clamp(0.0, 1.0)


def split_relight(tensors: dict[str, torch.Tensor], model_config: dict[str, Any]) -> tuple[
        dict[str, torch.Tensor], dict[str, Any], DCENet | None]:
    """Split a checkpoint that bundles Zero-DCE into (segmenter tensors, segmenter config, relighting net or None).

    ULCA exports ``relight.*`` tensors and ``model["relight"]`` next to the segmenter's; an inference tool
    rebuilds the segmenter from the rest and relights images first.
    """
    config = dict(model_config)
    relight_cfg = config.pop("relight", None)
    seg = {k: v for k, v in tensors.items() if not k.startswith("relight.")}
    if relight_cfg is None:
        return seg, config, None
    net = DCENet(relight_cfg.get("channels", 32), relight_cfg.get("iterations", 8))
    net.load_state_dict({k.removeprefix("relight."): v for k, v in tensors.items() if k.startswith("relight.")})
    return seg, config, net.eval().requires_grad_(False)

"""Geometry and labels of the synthetic street scenes: labelIds, colours, the camera, lights, primitive sets.

Everything is a planar polygon ("primitive") lying in one of three kinds of plane (X = const for facades and
vehicle sides, Y = const for the ground and roofs, Z = const for billboards and vehicle fronts), so that the
renderer can recover each pixel's 3-D position and normal exactly from the plane of the primitive that covers
it. See `nightseg.synthetic.scene` for the world frame and how a scene is put together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from cityscapesscripts.helpers.labels import name2label

# --- labels ---------------------------------------------------------------------------------------

L = {name: lab.id for name, lab in name2label.items() if lab.id >= 0}
"""Cityscapes labelId by class name (e.g. ``L["road"] == 7``); void ids included (ego vehicle, static)."""

# plane axes of a primitive
AX_X, AX_Y, AX_Z, AX_SKY = 0, 1, 2, 3

# procedural patterns evaluated per pixel by the renderer
PAT_NONE, PAT_FACADE, PAT_PAVERS, PAT_FENCE, PAT_LEAVES, PAT_GLASS = 0, 1, 2, 3, 4, 5
N_PARAMS = 8

# painter layers
LAYER_SKY, LAYER_FAR, LAYER_GROUND, LAYER_MARK, LAYER_BACK, LAYER_FACADE, LAYER_LINE, LAYER_STAND = range(8)


def srgb(*rgb: float) -> tuple[float, float, float]:
    """Return the linear-light albedo of an sRGB colour given as 0..255 components."""
    return tuple(float((c / 255.0) ** 2.2) for c in rgb)  # type: ignore[return-value]


FACADE_COLORS = [srgb(*c) for c in [
    (200, 190, 170), (225, 220, 205), (180, 170, 160), (150, 90, 70), (170, 120, 90), (210, 190, 140),
    (160, 160, 165), (120, 115, 110), (190, 200, 195), (215, 180, 150), (110, 100, 95), (90, 95, 105),
    (200, 160, 120), (235, 230, 225), (140, 150, 120), (175, 185, 200)]]
CAR_COLORS = [srgb(*c) for c in [
    (230, 230, 232), (22, 22, 24), (150, 150, 155), (95, 97, 100), (150, 25, 28), (30, 50, 110),
    (28, 62, 42), (205, 175, 45), (185, 165, 135), (65, 35, 25), (105, 135, 165), (205, 95, 35),
    (60, 60, 62), (200, 200, 190), (120, 125, 110), (45, 70, 95)]]
CLOTHES = [srgb(*c) for c in [
    (30, 30, 35), (52, 46, 40), (22, 32, 62), (82, 82, 88), (125, 22, 32), (152, 140, 120),
    (205, 205, 195), (62, 82, 52), (185, 122, 42), (92, 52, 92), (42, 92, 132), (230, 230, 222),
    (45, 60, 90), (110, 85, 60)]]
SKIN = [srgb(*c) for c in [(232, 192, 162), (202, 152, 112), (142, 96, 66), (92, 62, 42)]]
SIDEWALK_COLORS = [srgb(*c) for c in [
    (150, 146, 140), (172, 162, 150), (128, 125, 126), (162, 122, 110), (120, 120, 130), (185, 180, 170)]]
VEG_COLORS = [srgb(*c) for c in [
    (62, 92, 40), (46, 76, 36), (82, 112, 52), (92, 102, 42), (40, 60, 36), (112, 112, 52), (70, 85, 45)]]
TERRAIN_COLORS = [srgb(*c) for c in [
    (112, 122, 62), (100, 112, 56), (122, 106, 80), (92, 102, 52), (142, 130, 92), (130, 128, 80)]]
WALL_COLORS = [srgb(*c) for c in [
    (172, 166, 160), (140, 136, 130), (152, 92, 72), (192, 186, 170), (110, 110, 106), (205, 200, 190)]]
FENCE_COLORS = [srgb(*c) for c in [
    (62, 66, 62), (92, 92, 97), (42, 72, 52), (122, 92, 62), (152, 152, 152), (32, 32, 32), (180, 40, 40)]]
POLE_COLORS = [srgb(*c) for c in [(102, 106, 112), (72, 76, 72), (132, 132, 132), (52, 62, 56), (150, 145, 120)]]
GLASS = srgb(35, 42, 50)
TYRE = srgb(22, 22, 22)

LAMP_COLORS = {  # night light-source colours (linear RGB, unnormalised)
    "sodium": (1.0, 0.52, 0.16),
    "led": (0.86, 0.92, 1.0),
    "warm_led": (1.0, 0.82, 0.6),
    "mercury": (0.78, 1.0, 0.9),
}


# --- camera -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera without rotation: focal length and principal point in pixels, position in metres."""

    f: float
    cx: float
    cy: float
    x: float
    y: float
    z: float
    height: int
    width: int

    def project(self, pts: np.ndarray) -> np.ndarray:
        """Return the Nx2 pixel coordinates (u, v) of Nx3 world points (which must be in front)."""
        zc = pts[:, 2] - self.z
        u = self.cx + self.f * (pts[:, 0] - self.x) / zc
        v = self.cy - self.f * (pts[:, 1] - self.y) / zc
        return np.stack([u, v], axis=1)

    def offset(self, rng: np.random.Generator, strength: float = 1.0) -> tuple[Camera, dict]:
        """Return a nearby camera (the other frame of a day/night pair) and the offset applied.

        The offset is a small translation (lateral, forward, height) plus a pan/tilt (principal-point
        shift) and a zoom (focal scale): the coarse, GPS-level correspondence of Dark Zurich pairs.
        """
        s = strength
        d = {
            "dx_m": float(rng.uniform(-0.5, 0.5) * s),
            "dz_m": float(rng.uniform(-3.0, 3.0) * s),
            "dy_m": float(rng.uniform(-0.06, 0.06) * s),
            "shift_u": float(rng.uniform(-0.04, 0.04) * s * self.width),
            "shift_v": float(rng.uniform(-0.025, 0.025) * s * self.height),
            "zoom": float(math.exp(rng.uniform(-0.04, 0.04) * s)),
        }
        cam = replace(
            self,
            f=self.f * d["zoom"],
            cx=self.cx + d["shift_u"],
            cy=self.cy + d["shift_v"],
            x=self.x + d["dx_m"],
            y=self.y + d["dy_m"],
            z=self.z + d["dz_m"],
        )
        return cam, d


# --- primitives --------------------------------------------------------------------------------------


@dataclass
class Light:
    """A night light source: position, linear colour*intensity, optional spot direction, visible glow."""

    pos: tuple[float, float, float]
    color: tuple[float, float, float]
    intensity: float
    direction: tuple[float, float, float] | None = None
    exponent: float = 0.0
    glow: float = 0.0  # brightness of the emitter as seen by the camera (bloom source)
    illuminates: bool = True


@dataclass
class PrimSet:
    """A growing list of planar polygons with per-primitive attributes, lights and shadow casters."""

    polys: list[list[np.ndarray]] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    albedo: list[tuple[float, float, float]] = field(default_factory=list)
    axis: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    pattern: list[int] = field(default_factory=list)
    params: list[tuple[float, ...]] = field(default_factory=list)
    tex: list[tuple[float, int]] = field(default_factory=list)
    emit: list[tuple[float, float, float]] = field(default_factory=list)
    emit_day: list[tuple[float, float, float]] = field(default_factory=list)
    keys: list[tuple[int, float, int]] = field(default_factory=list)
    lights: list[Light] = field(default_factory=list)
    casters: list[tuple] = field(default_factory=list)

    def add(
        self,
        polys: list[np.ndarray] | np.ndarray,
        label: int,
        albedo: tuple[float, float, float],
        axis: int,
        value: float,
        layer: int,
        depth: float,
        *,
        pattern: int = PAT_NONE,
        params: tuple[float, ...] = (),
        tex: float = 0.08,
        tex_scale: int = 1,
        emit: tuple[float, float, float] = (0.0, 0.0, 0.0),
        emit_day: tuple[float, float, float] = (0.0, 0.0, 0.0),
        order: int = 0,
    ) -> None:
        """Append one primitive (one or more polygons of Nx3 world points sharing its attributes)."""
        self.polys.append([polys] if isinstance(polys, np.ndarray) else polys)
        self.label.append(label)
        self.albedo.append(albedo)
        self.axis.append(axis)
        self.value.append(value)
        self.pattern.append(pattern)
        self.params.append(tuple(params) + (0.0,) * (N_PARAMS - len(params)))
        self.tex.append((tex, tex_scale))
        self.emit.append(emit)
        self.emit_day.append(emit_day)
        self.keys.append((layer, -float(depth), order))

    def __len__(self) -> int:
        return len(self.label)


# geometry helpers: polygons in the three plane kinds


def quad_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane X = x spanning [z0, z1] x [y0, y1]."""
    return np.array([[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]], dtype=np.float64)


def quad_y(x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> np.ndarray:
    """Rectangle in the plane Y = y spanning [x0, x1] x [z0, z1]."""
    return np.array([[x0, y, z0], [x1, y, z0], [x1, y, z1], [x0, y, z1]], dtype=np.float64)


def quad_z(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """Rectangle in the plane Z = z spanning [x0, x1] x [y0, y1]."""
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=np.float64)


def poly_z(xy: list[tuple[float, float]] | np.ndarray, z: float) -> np.ndarray:
    """Polygon in the plane Z = z from 2-D (x, y) vertices."""
    out = np.empty((len(xy), 3))
    out[:, :2] = xy
    out[:, 2] = z
    return out


def ellipse_z(cx: float, cy: float, rx: float, ry: float, z: float, n: int = 14,
              rng: np.random.Generator | None = None, jitter: float = 0.0) -> np.ndarray:
    """Ellipse (optionally with jittered radius: a blob) in the plane Z = z."""
    cs = _circle(n)
    r = 1.0 + (rng.uniform(-jitter, jitter, n) if rng is not None and jitter else 0.0)
    out = np.empty((n, 3))
    out[:, 0] = cx + rx * r * cs[0]
    out[:, 1] = cy + ry * r * cs[1]
    out[:, 2] = z
    return out


_CIRCLES: dict[int, np.ndarray] = {}


def _circle(n: int) -> np.ndarray:
    if n not in _CIRCLES:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        _CIRCLES[n] = np.stack([np.cos(a), np.sin(a)])
    return _CIRCLES[n]


def ellipse_x(x: float, cz: float, cy: float, rz: float, ry: float, n: int = 14) -> np.ndarray:
    """Ellipse in the plane X = x (a wheel seen on a vehicle side)."""
    cs = _circle(n)
    return np.stack([np.full(n, x), cy + ry * cs[1], cz + rz * cs[0]], axis=1)


def segment_z(x0: float, y0: float, x1: float, y1: float, width: float, z: float) -> np.ndarray:
    """A thick line segment (a bar of a bicycle frame, an arm) in the plane Z = z."""
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    ox, oy = -dy / n * width / 2, dx / n * width / 2
    return poly_z([(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)], z)


# --- scene ------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A static street layout, its camera, its look (lighting parameters) and its dynamic sets."""

    camera: Camera
    static: PrimSet
    dynamics: list[PrimSet]
    look: dict
    street: dict
    domain: str


def pick(rng: np.random.Generator, seq: list):
    return seq[int(rng.integers(len(seq)))]


def jitter_color(rng: np.random.Generator, color: tuple[float, float, float], amount: float = 0.15) -> tuple:
    """`color` scaled by a random brightness and slightly re-tinted (each factor within +-amount)."""
    g = rng.uniform(1 - amount, 1 + amount, 4).tolist()
    return (min(color[0] * g[0] * (2 + g[1]) / 3, 1.0), min(color[1] * g[0] * (2 + g[2]) / 3, 1.0),
            min(color[2] * g[0] * (2 + g[3]) / 3, 1.0))


def in_intersection(st: dict, z0: float, z1: float, side: int) -> bool:
    """True if the depth range [z0, z1] on street side `side` (-1 left, 1 right) touches an intersection."""
    return any(a - 1 < z1 and z0 < b + 1 and side in sides for a, b, sides in st["inters"])



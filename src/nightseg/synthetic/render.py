"""Day and night rendering of synthetic street scenes (numpy + OpenCV, one core).

Pipeline for one frame: rasterise the scene's planar primitives in painter's order into a primitive-id
map (``cv2.fillPoly``); recover each pixel's 3-D position and normal from its primitive's plane; look up
albedo, texture and procedural patterns (windows, pavers, fence bars, leaves); then shade.

- **Day**: sun (Lambert, with cast shadows from the building height profile and from trees, poles,
  vehicles and people) plus sky light; a sky gradient with clouds; auto-exposure on the log-mean
  luminance; sRGB tone curve. Over-exposed pixels come from the sky and bright sunlit surfaces.
- **Night**: a low, tinted ambient (moon/skyglow); street lamps (sodium, LED or mercury casts), ego
  headlights, head- and tail-lights, traffic lights and shop windows as lights with inverse-square
  falloff and spot cones; emissive lamp heads and lit windows; auto-exposure capped at a maximum gain
  (so dark regions stay under-exposed); photon (shot) and read noise amplified by the gain, partly
  low-frequency as after a camera's denoiser; texture reduced (lost in the dark); partial white balance
  (the colour cast survives); saturation and bloom around light sources; sRGB tone curve. Pixels whose
  noise-free brightness stays below a threshold are marked invalid, like Dark Zurich's ``_gt_invIds``.

Speed: the per-pixel work is a few dozen vectorised passes over flat (N,) / (N, 3) float32 buffers;
colour changes of patterns touch only the pixels concerned, lighting is evaluated on a coarse grid and
upsampled, exposure statistics come from a subsample, and the gain is folded into the tone curve.
Careful: OpenCV arithmetic with a Python scalar on a 3-channel array applies it to the first channel only,
so scalar arithmetic on colour buffers is done with numpy.

Length: this is one cohesive module, the renderer of one frame: its stages share the per-pixel geometry
buffers (primitive ids, positions, normals) and the scene's look, and are profiled stage by stage as
module functions (bench/bench_synthetic.py); split, every stage would pass the same dozen buffers around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from nightseg.core.classes import LABEL_ID_TO_TRAIN_ID
from nightseg.synthetic.primitives import (
    AX_SKY,
    AX_X,
    AX_Y,
    AX_Z,
    PAT_FACADE,
    PAT_FENCE,
    PAT_GLASS,
    PAT_LEAVES,
    PAT_PAVERS,
    Camera,
    L,
    Light,
    PrimSet,
    Scene,
)

NEAR = 0.25
BLOOM_NEAR, BLOOM_WIDE, BLOOM_SPLAT = 0.1, 0.03, 6.0
"""Share of the excess energy of saturated regions spread as a narrow and a wide halo, and energy of a
visible point light per unit of its glow (exposure-independent units)."""
INVALID_V = 0.06
"""A night pixel is invalid (too dark to recognise) when its noise-free HSV value, averaged over a small
window, is below this threshold."""


@dataclass
class Frame:
    """One rendered frame: RGB image, Cityscapes labelIds and trainIds, invalid mask (night only)."""

    image: np.ndarray
    label_ids: np.ndarray
    train_ids: np.ndarray
    invalid: np.ndarray | None
    camera: Camera
    sources: np.ndarray | None = None
    """Night only: pixels of light sources (emissive surfaces and visible point lights)."""


@dataclass
class _Flat:
    """Primitives in painter's order: vertices of all polygons plus per-primitive attribute tables."""

    verts: np.ndarray  # (V, 3) world points of every polygon
    starts: np.ndarray  # (P + 1,) polygon start offsets into verts
    poly_prim: np.ndarray  # (P,) primitive index of each polygon
    attr: np.ndarray  # (n, K) float32 per-primitive attributes, columns _C_*
    albedo: np.ndarray  # (n, 3) float32, contiguous copy of attr[:, 0:3]
    label: np.ndarray  # (n,) uint8 Cityscapes labelIds
    params: np.ndarray  # (n, 8) float32 pattern parameters
    emit: np.ndarray  # (n, 3) float32 night emission
    emit_day: np.ndarray  # (n, 3) float32 day emission
    lights: list[Light]
    casters: list[tuple]


_C_ALB, _C_VAL, _C_TEX, _C_SCALE, _C_AXIS, _C_PAT, _C_RETRO = 0, 3, 4, 5, 6, 7, 8


def _arrays(ps: PrimSet) -> dict:
    """Numpy form of a primitive set (cached on the set: a static layout is merged with many traffic sets)."""
    cache = getattr(ps, "_arrays_cache", None)
    if cache is not None and cache["n"] == len(ps.label):
        return cache
    polys = [p for group in ps.polys for p in group]
    n = len(ps.label)
    label = np.array(ps.label, dtype=np.uint8).reshape(n)
    params = np.array(ps.params, dtype=np.float32).reshape(n, 8)
    attr = np.zeros((n, 9), dtype=np.float32)
    attr[:, 0:3] = np.array(ps.albedo, dtype=np.float32).reshape(n, 3)
    attr[:, _C_VAL] = ps.value
    tex = np.array(ps.tex, dtype=np.float32).reshape(n, 2)
    attr[:, _C_TEX] = tex[:, 0]
    attr[:, _C_SCALE] = tex[:, 1]
    attr[:, _C_AXIS] = ps.axis
    attr[:, _C_PAT] = ps.pattern
    attr[:, _C_RETRO] = (label == L["traffic sign"]) & (params[:, 0] > 0.5)
    keys = np.array(ps.keys, dtype=np.float64).reshape(n, 3)
    cache = {
        "n": n,
        "verts": np.concatenate(polys) if polys else np.zeros((0, 3)),
        "lens": np.array([len(p) for p in polys], dtype=np.int64),
        "poly_prim": np.repeat(np.arange(n), [len(g) for g in ps.polys]),
        "label": label,
        "params": params,
        "attr": attr,
        "emit": np.array(ps.emit, dtype=np.float32).reshape(n, 3),
        "emit_day": np.array(ps.emit_day, dtype=np.float32).reshape(n, 3),
        "keys": keys,
    }
    ps._arrays_cache = cache  # type: ignore[attr-defined]
    return cache


def merge(*sets: PrimSet) -> _Flat:
    """Concatenate primitive sets and sort them into painter's order (sky first)."""
    arrs = [_arrays(s) for s in sets]
    offs = np.cumsum([0] + [a["n"] for a in arrs])
    keys = np.concatenate([a["keys"] for a in arrs])
    seq = np.arange(len(keys))
    order = np.lexsort((seq, keys[:, 2], keys[:, 1], keys[:, 0]))  # layer, -depth, order, insertion
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    poly_prim = np.concatenate([a["poly_prim"] + o for a, o in zip(arrs, offs)])
    lens = np.concatenate([a["lens"] for a in arrs])
    verts = np.concatenate([a["verts"] for a in arrs])
    vstart = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else lens
    porder = np.argsort(rank[poly_prim], kind="stable")
    lens_s = lens[porder]
    starts = np.concatenate([[0], np.cumsum(lens_s)])
    vidx = np.repeat(vstart[porder] - starts[:-1], lens_s) + np.arange(starts[-1])

    def cat(k: str) -> np.ndarray:
        return np.concatenate([a[k] for a in arrs])[order]

    return _Flat(
        verts=verts[vidx],
        starts=starts,
        poly_prim=rank[poly_prim][porder],
        attr=(attr := cat("attr")),
        albedo=np.ascontiguousarray(attr[:, 0:3]),
        label=cat("label"),
        params=cat("params"),
        emit=cat("emit"),
        emit_day=cat("emit_day"),
        lights=[lt for s in sets for lt in s.lights],
        casters=[c for s in sets for c in s.casters],
    )


# --- rasterisation ---------------------------------------------------------------------------------------


def _clip_near(poly: np.ndarray, zmin: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a 3-D polygon against the plane Z >= zmin."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= zmin, b[2] >= zmin
        if ina:
            out.append(a)
        if ina != inb:
            t = (zmin - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))


def _fixed(uv: np.ndarray) -> np.ndarray:
    """Pixel coordinates to cv2's 4-bit fixed point (pixel centres at integer + 0.5)."""
    return np.clip(np.round((uv - 0.5) * 16), -(1 << 24), 1 << 24).astype(np.int32)


def fill_polys(canvas: np.ndarray, cam: Camera, verts: np.ndarray, starts: np.ndarray, values: list) -> None:
    """Fill polygons (verts[starts[k]:starts[k+1]]) with values[k], in order, clipping at the near plane."""
    if len(verts) == 0:
        return
    h, w = canvas.shape[:2]
    zmin = cam.z + NEAR
    z = verts[:, 2]
    front = z >= zmin
    zs = np.where(front, z - cam.z, 1.0)
    uv = np.empty((len(verts), 2))
    uv[:, 0] = cam.cx + cam.f * (verts[:, 0] - cam.x) / zs
    uv[:, 1] = cam.cy - cam.f * (verts[:, 1] - cam.y) / zs
    q = _fixed(uv)
    s0 = starts[:-1]
    behind = np.minimum.reduceat(z, s0) < zmin
    out = ((np.maximum.reduceat(uv[:, 0], s0) < -1) | (np.minimum.reduceat(uv[:, 0], s0) > w + 1)
           | (np.maximum.reduceat(uv[:, 1], s0) < -1) | (np.minimum.reduceat(uv[:, 1], s0) > h + 1))
    st = starts.tolist()
    for k, (b, o) in enumerate(zip(behind.tolist(), out.tolist())):
        if b:
            p = _clip_near(verts[st[k]:st[k + 1]], zmin)
            if len(p) < 3:
                continue
            cv2.fillPoly(canvas, [_fixed(cam.project(p))], values[k], lineType=cv2.LINE_8, shift=4)
        elif not o:
            cv2.fillPoly(canvas, [q[st[k]:st[k + 1]]], values[k], lineType=cv2.LINE_8, shift=4)


def rasterize(flat: _Flat, cam: Camera) -> np.ndarray:
    """Return the HxW int32 map of primitive indices (painter's order; the sky, index 0, is the background)."""
    pm = np.zeros((cam.height, cam.width), dtype=np.int32)
    sky = flat.attr[flat.poly_prim, _C_AXIS] == AX_SKY
    first = int(np.argmin(sky)) if not sky.all() else len(sky)  # sky polygons come first (LAYER_SKY)
    if sky[first:].any():
        raise ValueError("sky primitives must come first in painter's order")
    starts = flat.starts[first:]
    fill_polys(pm, cam, flat.verts[starts[0]:], starts - starts[0], flat.poly_prim[first:].tolist())
    return pm


# --- per-pixel geometry, textures and patterns ----------------------------------------------------------------

_TILE_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def noise_tiles(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise tiles of 1.5h rows and w columns from a fixed seed, cached per size: three smooth unit-variance
    textures (fine, medium, coarse; shape (3, 1.5h, w)) and sensor noise (1.5h, w, 3): white noise plus
    low-frequency blotches, as left by a camera's denoiser. Frames use a random window of rows (rows
    only, so that the windows are contiguous and cost no copy)."""
    key = (h, w)
    if key not in _TILE_CACHE:
        rng = np.random.default_rng(20240611)
        th = h + h // 2
        s = w / 512.0
        tiles = []
        for sigma in (0.7 * s, 2.5 * s, 9.0 * s):
            n = rng.standard_normal((th, w), dtype=np.float32)
            n = cv2.GaussianBlur(n, (0, 0), max(sigma, 0.4), borderType=cv2.BORDER_REFLECT)
            tiles.append(n / (n.std() + 1e-6))
        white = rng.standard_normal((th, w, 3), dtype=np.float32)
        low = rng.standard_normal((th // 2 + 1, w // 2 + 1, 3), dtype=np.float32)
        sensor = 0.6 * white + 0.8 * cv2.resize(low, (w, th), interpolation=cv2.INTER_LINEAR)
        _TILE_CACHE[key] = (np.stack(tiles), sensor)
    return _TILE_CACHE[key]


def _crop(h: int, w: int, rng: np.random.Generator, sensor: bool = False) -> np.ndarray:
    """A random window of h rows of the smooth tiles (3, h*w, flat) or of the sensor-noise tile (h, w, 3)."""
    smooth, sn = noise_tiles(h, w)
    oy = int(rng.integers(0, h // 2 + 1))
    return sn[oy:oy + h] if sensor else smooth[:, oy:oy + h].reshape(3, h * w)


def _hash(a: np.ndarray, b: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer triple (vectorised)."""
    x = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (seed.astype(np.int64) * 83492791)
    x = (x ^ (x >> 13)) * 1274126177
    return ((x ^ (x >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


class _Geom:
    """Per-pixel geometry recovered on demand from the primitive map: depth, 3-D point, normal."""

    def __init__(self, flat: _Flat, cam: Camera, pm: np.ndarray):
        self.cam, self.pm, self.w = cam, pm, cam.width
        self.axis = flat.attr[:, _C_AXIS].astype(np.int8)
        self.val = flat.attr[:, _C_VAL]
        self.du = (np.arange(cam.width, dtype=np.float32) - cam.cx + 0.5) / cam.f
        self.dv = (cam.cy - np.arange(cam.height, dtype=np.float32) - 0.5) / cam.f
        # normals per primitive, facing the camera
        n = np.zeros((len(self.axis), 3), dtype=np.float32)
        n[self.axis == AX_X, 0] = -np.sign(self.val[self.axis == AX_X] - cam.x)
        n[self.axis == AX_Y, 1] = np.sign(cam.y - self.val[self.axis == AX_Y])
        n[self.axis == AX_Z, 2] = -1.0
        self.normals = n

    def at(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Depth t and world X, Y, Z of the flat pixel indices `idx`."""
        cam = self.cam
        p = np.take(self.pm, idx)
        ax = np.take(self.axis, p)
        val = np.take(self.val, p)
        dx = np.take(self.du, idx % self.w)
        dy = np.take(self.dv, idx // self.w)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(ax == AX_X, (val - cam.x) / dx, np.where(ax == AX_Y, (val - cam.y) / dy, val - cam.z))
        t = np.where((ax == AX_SKY) | ~(t > 0), 1e4, np.minimum(np.maximum(t, NEAR), 1e4)).astype(np.float32)
        return t, cam.x + t * dx, cam.y + t * dy, cam.z + t


@dataclass
class _Surface:
    """Per-pixel buffers of one frame, flattened to N = H*W (colour buffers are Nx3)."""

    shape: tuple[int, int]
    pm: np.ndarray  # prim index per pixel
    flat: _Flat
    geom: _Geom
    sky: np.ndarray  # flat indices of sky pixels
    albedo: np.ndarray  # Nx3 textured albedo
    emission: list[tuple[np.ndarray, np.ndarray]]  # sparse (indices, Nx3 values) added after shading
    glass: list[tuple[np.ndarray, np.ndarray]]  # sparse (indices, weight): sky-reflecting glass by day
    noise: np.ndarray  # (3, N) smooth noise textures cropped for this frame


def _prim_emission(table: np.ndarray, pm: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    has = table.any(axis=1)
    if not has.any():
        return []
    idx = np.flatnonzero(np.take(has, pm))
    return [(idx, np.take(table, np.take(pm, idx), axis=0))]


def surface(flat: _Flat, cam: Camera, rng: np.random.Generator, night: bool, lit_share: float = 0.25) -> _Surface:
    """Rasterise; compute textured albedo, procedural patterns and (sparse) emission per pixel.

    `lit_share`: the share of windows lit at night. Patterns first scale a per-pixel brightness
    multiplier (texture, paver joints, fence bars, leaves, window-grid dimming); colour changes (window
    glass, sign bands, leaf tint) are applied to the few pixels concerned afterwards."""
    h, w = cam.height, cam.width
    pm = rasterize(flat, cam).ravel()
    geom = _Geom(flat, cam, pm)
    noise = _crop(h, w, rng)
    scale = np.take(flat.attr[:, _C_SCALE].astype(np.int8), pm)
    amp = flat.attr[:, _C_TEX] * (0.6 if night else 1.0)
    texmul = np.take(amp, pm)
    texmul *= np.where(scale == 0, noise[0], np.where(scale == 1, noise[1], noise[2]))
    texmul += 1.0
    np.maximum(texmul, 0.2, out=texmul)
    emission = _prim_emission(flat.emit if night else flat.emit_day, pm)
    glass: list[tuple[np.ndarray, np.ndarray]] = []
    recolor: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []  # (idx, colour, mix weight or None)
    tint: list[tuple[np.ndarray, np.ndarray]] = []  # (idx, green-channel factor)

    pat = np.take(flat.attr[:, _C_PAT].astype(np.int8), pm)
    for code in np.flatnonzero(np.bincount(pat, minlength=8)).tolist():
        if code == 0:
            continue
        idx = np.flatnonzero(pat == code)
        if code == PAT_LEAVES:  # leafy clumps (image-space noise): no geometry needed
            texmul[idx] *= np.clip(0.55 + 0.35 * noise[0][idx] + 0.25 * noise[1][idx], 0.15, 1.6)
            tint.append((idx, np.clip(1.0 + 0.15 * noise[2][idx], 0.7, 1.3)))
            continue
        p = np.take(pm, idx)
        prm = np.take(flat.params, p, axis=0)
        if code == PAT_GLASS:  # vehicle windows: reflect the sky by day; params[0] = lit interior at night
            glass.append((idx, np.full(len(idx), 0.6, dtype=np.float32)))
            if night and prm[:, 0].any():
                emission.append((idx, prm[:, 0:1] * np.array([0.3, 0.27, 0.2], dtype=np.float32)))
            continue
        t, X, Y, Z = geom.at(idx)
        ax = np.take(geom.axis, p)
        a = np.where(ax == AX_X, Z, X)
        b = np.where(ax == AX_Y, Z, Y)
        if code == PAT_FACADE:
            texmul[idx] *= _facade(idx, a, b, prm, t, cam, flat.attr, p, recolor, emission, glass, night,
                                   noise[1][idx], lit_share)
        elif code == PAT_PAVERS:
            fa = np.mod(a / prm[:, 0], 1.0)
            fb = np.mod(b / prm[:, 1], 1.0)
            joint = np.flatnonzero(((fa < 0.07) | (fb < 0.07)) & (t < 25))
            texmul[idx[joint]] *= 1.0 - 0.35 * prm[joint, 2]
        elif code == PAT_FENCE:
            spacing, hgt, density = prm[:, 1], prm[:, 2], prm[:, 3]
            fa = np.mod(a / spacing, 1.0)
            pix = spacing * cam.f / t
            solid = (fa < density) | (b > hgt - 0.08) | (np.abs(b - hgt * 0.15) < 0.05)
            texmul[idx] *= np.where(pix > 2.5, np.where(solid, 1.0, 0.3), 0.3 + 0.7 * density)
    albedo = np.take(flat.albedo, pm, axis=0)
    albedo *= texmul[:, None]
    for idx, col, mix in recolor:
        if mix is None:
            albedo[idx] = col
        else:
            sub = albedo[idx]
            sub += (col - sub) * mix[:, None]
            albedo[idx] = sub
    for idx, g in tint:
        albedo[idx, 1] *= g
    sky = np.flatnonzero(np.take(geom.axis, pm) == AX_SKY)
    return _Surface((h, w), pm, flat, geom, sky, albedo, emission, glass, noise)


def _facade(idx, a, b, prm, t, cam, attr, p, recolor, emission, glass, night: bool, inner: np.ndarray,
            lit_share: float) -> np.ndarray:
    """Windows, shop fronts, doors, sign bands and cornices on building facades (facade coordinates in metres).

    idx: flat pixel indices; a, b: position along the facade and height; prm: the facade parameters; p:
    the primitive of each pixel. Returns the brightness factor of each pixel; glass and sign colours go
    to `recolor`, lit windows to `emission`."""
    origin, spacing, floor_h, ww, wh, shop, hgt, seed = prm.T
    colf = (a - origin) / spacing
    col = np.floor(colf)
    dfa = np.abs(colf - col - 0.5)
    gf = floor_h * 1.25
    rowf = (b - gf) / floor_h
    row = np.floor(rowf)
    fb = rowf - row
    shop_b = shop > 0.5
    win = (b >= gf) & (b < hgt - 0.9) & (dfa < ww * 0.5) & (fb > 0.25) & (fb < 0.25 + wh)
    shopwin = shop_b & (b > 0.35) & (b < gf - 0.55) & (dfa < 0.43)
    near_glass = shopwin | (~shop_b & (b < 2.2) & (dfa < 0.18) & (np.mod(col, 3) == 1))  # + doors
    # the window grid fades where it would alias (windows under ~1.5 px): the facade just looks dimmer
    vis = np.clip((np.minimum(spacing * ww, floor_h * wh) * (cam.f / t) - 1.0) * (1 / 1.5), 0.0, 1.0)
    factor = 1.0 - 0.25 * (1 - vis) * ww * wh - 0.25 * ((b > hgt - 0.5) | (np.abs(b - gf) < 0.1))
    gi = np.flatnonzero(win | near_glass)
    if len(gi):
        ig = idx[gi]
        hv = _hash(col[gi], row[gi], seed[gi])  # one 16-bit hash per window: tint, lit or not, brightness
        h_tint = (hv * 16.0) % 1.0
        mixw = np.where(near_glass[gi], 1.0, vis[gi])
        glass_col = (0.05 + 0.05 * h_tint)[:, None] * np.array([1.0, 1.15, 1.35], dtype=np.float32)
        recolor.append((ig, glass_col, mixw))
        glass.append((ig, mixw * 0.8))
        if night:
            warmth = np.stack([np.ones_like(h_tint), 0.75 + 0.2 * h_tint, 0.45 + 0.45 * h_tint], axis=1)
            lit = np.flatnonzero(win[gi] & (hv < lit_share))
            if len(lit):
                level = (0.25 + 0.6 * ((hv[lit] * 256.0) % 1.0)) * vis[gi[lit]]
                emission.append((ig[lit], level[:, None] * warmth[lit]))
            shop_lit = np.flatnonzero(shopwin[gi] & ((hv * 4.0) % 1.0 < 0.7))
            if len(shop_lit):  # lit shop window: bright, warm or cool, with a shaded interior
                level = (0.3 + 0.9 * ((hv[shop_lit] * 256.0) % 1.0)) * np.clip(0.75 + 0.35 * inner[gi[shop_lit]], 0.2, 1.5)
                emission.append((ig[shop_lit], level[:, None] * warmth[shop_lit]))
    band = np.flatnonzero(shop_b & (b >= gf - 0.5) & (b < gf - 0.1))
    if len(band):  # shop sign bands: a colour per shop, lit at night for half of them
        hb = _hash(col[band], col[band] * 0 + 1, seed[band])
        sign = np.stack([hb, (hb * 8) % 1.0, (hb * 64) % 1.0], axis=1) * 0.6 + 0.05
        recolor.append((idx[band], sign, None))
        if night:
            on = (hb * 2.0) % 1.0 < 0.5
            emission.append((idx[band[on]], sign[on] * 2.5))
    return factor


# --- shading -----------------------------------------------------------------------------------------------

_GAMMA_LUT = np.clip(np.power(np.arange(256) / 255.0, 2.0 / 2.2) * 255.0 + 0.5, 0, 255).astype(np.uint8)
"""Maps 8-bit gamma-2.0 codes to gamma-2.2 codes."""


def _to_uint8(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Exposed linear light (`gain` * x, HxWx3, clipped to [0, 1]) to 8-bit sRGB-like values (gamma 2.2).

    Encoded as sqrt (gamma 2, fine steps in the dark; the gain folds into its scale) to 8 bits with
    saturation, then remapped by a lookup table: a few fast OpenCV passes instead of a float power.
    Modifies `x`."""
    np.maximum(x, 0.0, out=x)
    return cv2.LUT(cv2.convertScaleAbs(cv2.sqrt(x), alpha=255.0 * math.sqrt(gain)), _GAMMA_LUT)


def _luma(x: np.ndarray) -> np.ndarray:
    """Rec. 709 luminance of Nx3 linear RGB."""
    return x @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _add_sparse(img: np.ndarray, items: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for idx, val in items:
        img[idx] += val


def _caster_polys(casters: list[tuple], sun: list[float]) -> list[np.ndarray]:
    """Ground-plane shadow polygons of trees, poles, people and vehicles for sun direction `sun`."""
    sx, sy, sz = sun
    kx, kz = -sx / sy, -sz / sy
    polys = []
    cs = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    for c in casters:
        if c[0] == "blob":
            _, x, z, r, hc = c
            x2, z2 = x + kx * hc, z + kz * hc
            polys.append(np.stack([x2 + r * np.cos(cs), np.zeros(12), z2 + r * np.sin(cs) * 1.2], axis=1))
        elif c[0] == "pole":
            _, x, z, wd, hc = c
            x2, z2 = x + kx * hc, z + kz * hc
            nxp, nzp = -(z2 - z), x2 - x
            nn = math.hypot(nxp, nzp) or 1.0
            ox, oz = nxp / nn * wd / 2, nzp / nn * wd / 2
            polys.append(np.array([[x + ox, 0, z + oz], [x2 + ox, 0, z2 + oz], [x2 - ox, 0, z2 - oz],
                                   [x - ox, 0, z - oz]]))
        elif c[0] == "box":
            _, x0, x1, z0, z1, hc = c
            base = np.array([[x0, z0], [x1, z0], [x1, z1], [x0, z1]], dtype=np.float32)
            top = base + np.array([kx * hc, kz * hc], dtype=np.float32)
            hull = cv2.convexHull(np.concatenate([base, top]))[:, 0]
            polys.append(np.stack([hull[:, 0], np.zeros(len(hull)), hull[:, 1]], axis=1).astype(np.float64))
    return polys


def _shadow(S: _Surface, cam: Camera, look: dict, street: dict) -> np.ndarray:
    """Sun visibility loss in [0, 1] per pixel: building height profile along the sun ray (evaluated at
    half resolution) plus ground shadows of trees, poles, people and vehicles."""
    sx, sy, sz = look["sun"]
    h, w = S.shape
    side = -1 if sx < 0 else 1
    xb = street["sides"][side]["x_bld"]
    hb = street["sides"][side]["hb"]
    ys, xs = np.mgrid[0:h:2, 0:w:2]
    idx = (ys * w + xs).ravel()
    _, X, Y, Z = S.geom.at(idx)
    ts = (xb - X) * (1.0 / sx)
    yc = Y + ts * sy
    zc = np.clip(Z + ts * sz, 0, len(hb) - 1).astype(np.int32)
    blocked = ((X - xb) * side < -0.25) & (ts > 0) & (yc < np.take(hb, zc))
    shade = cv2.resize(blocked.astype(np.float32).reshape(ys.shape), (w, h), interpolation=cv2.INTER_LINEAR)
    polys = _caster_polys(S.flat.casters, look["sun"])
    if polys:
        canvas = np.zeros((h, w), dtype=np.float32)
        starts = np.concatenate([[0], np.cumsum([len(p) for p in polys])])
        fill_polys(canvas, cam, np.concatenate(polys), starts, [1.0] * len(polys))
        ground = (S.geom.normals[:, 1] > 0) & (S.geom.val < 0.3)
        shade = np.maximum(shade, canvas * np.take(ground, S.pm).reshape(h, w))
    return cv2.blur(shade, (3, 3)).ravel()


def shade_day(S: _Surface, cam: Camera, look: dict, street: dict) -> np.ndarray:
    """Return the linear-light day image (Nx3, before exposure): sun + sky light, sky gradient, clouds."""
    sun_dir = np.array(look["sun"], dtype=np.float32)
    sky_col = np.array(look["sky_top"], dtype=np.float32)
    sky_col = sky_col / sky_col.mean() * 0.5 + 0.5
    n = S.geom.normals
    e_sky = (look["sky_power"] * (0.45 + 0.55 * np.maximum(n[:, 1], 0)))[:, None] * sky_col
    if look["sunny"]:
        sun = np.take(look["sun_power"] * np.maximum(n @ sun_dir, 0.0), S.pm)
        sun *= 1.0 - _shadow(S, cam, look, street)
        E = np.take(e_sky, S.pm, axis=0)
        E += sun[:, None] * np.array([1.0, 0.97, 0.9], np.float32)
    else:
        E = np.take(e_sky, S.pm, axis=0)
    img = S.albedo * E
    _add_sparse(img, S.emission)
    for idx, wgt in S.glass:
        img[idx] += (wgt * (0.17 * look["sky_power"]))[:, None] * sky_col
    # sky: bright horizon to zenith colour, with clouds
    si = S.sky
    if len(si):
        top = np.array(look["sky_top"], dtype=np.float32) * 2.6
        horizon = np.full(3, 2.4 if look["sunny"] else 2.2, dtype=np.float32)
        vv = (si // S.shape[1] + 0.5 - cam.cy) / cam.f
        gz = np.clip(-vv * 2.2, 0, 1).astype(np.float32)[:, None]
        sky = horizon * (1 - gz) + top * gz
        clouds = np.clip(S.noise[2][si] * 0.5 + 0.3, 0, 1)[:, None] * (0.5 if look["sunny"] else 0.25)
        img[si] = sky * (1 - clouds) + clouds * 2.6
    img *= np.array(look["day_tint"], dtype=np.float32)
    return img


def _ego_lights(cam: Camera, look: dict) -> list[Light]:
    return [Light((cam.x + sxo * 0.75, 0.7, cam.z + 0.5), (1.0, 0.96, 0.9), 15.0 * look["ego_lights"],
                  direction=(0.0, -0.05, 1.0), exponent=12.0) for sxo in (-1, 1)]


def _lights_field(S: _Surface, lights: list[Light], cam: Camera, look: dict, step: int) -> np.ndarray:
    """Irradiance (Nx3) from all lights and the ambient, evaluated every `step` pixels, upsampled bilinearly."""
    h, w = S.shape
    ys, xs = np.mgrid[step // 2:h:step, step // 2:w:step]
    idx = (ys * w + xs).ravel()
    _, X, Y, Z = S.geom.at(idx)
    nrm = np.take(S.geom.normals, np.take(S.pm, idx), axis=0)
    nx, ny, nz = nrm[:, 0], nrm[:, 1], nrm[:, 2]
    amb = np.array(look["ambient_color"], dtype=np.float32) * look["ambient"]
    E = (0.5 + 0.5 * ny)[:, None] * amb
    use = [lt for lt in lights if lt.illuminates and lt.intensity >= 1.0 and lt.pos[2] - cam.z < 160]
    if use:
        P = np.array([lt.pos for lt in use], dtype=np.float32)
        lx = P[:, 0:1] - X
        ly = P[:, 1:2] - Y
        lz = P[:, 2:3] - Z
        d2 = lx * lx + ly * ly + lz * lz
        inv = 1.0 / np.sqrt(d2 + 1e-6)
        inten = np.array([lt.intensity for lt in use], dtype=np.float32)[:, None]
        f = np.maximum((nx * lx + ny * ly + nz * lz) * inv, 0.0) * inten / (d2 + 1.0)
        spots = [k for k, lt in enumerate(use) if lt.direction is not None and lt.exponent > 0]
        if spots:
            D = np.array([use[k].direction for k in spots], dtype=np.float32)
            D /= np.linalg.norm(D, axis=1, keepdims=True)
            ex = np.array([use[k].exponent for k in spots], dtype=np.float32)[:, None]
            c = np.maximum(-(D[:, 0:1] * lx[spots] + D[:, 1:2] * ly[spots] + D[:, 2:3] * lz[spots]) * inv[spots], 1e-6)
            f[spots] *= np.exp(ex * np.log(c))
        E = E + f.T @ np.array([lt.color for lt in use], dtype=np.float32)
    return cv2.resize(E.reshape((*ys.shape, 3)), (w, h), interpolation=cv2.INTER_LINEAR).reshape(-1, 3)


def shade_night(S: _Surface, cam: Camera, look: dict, lights: list[Light]) -> np.ndarray:
    """Return the linear-light night image (Nx3, before exposure)."""
    _h, w = S.shape
    img = _lights_field(S, list(lights) + _ego_lights(cam, look), cam, look, max(1, round(w / 128)))
    img *= S.albedo
    _add_sparse(img, S.emission)
    # retro-reflective sign faces shine back at the ego headlights
    ri = np.flatnonzero(np.take(S.flat.attr[:, _C_RETRO], S.pm))
    if len(ri):
        t = S.geom.at(ri)[0]
        img[ri] += (0.08 * look["ego_lights"] * np.clip(30.0 / t, 0, 3))[:, None] * np.array(
            [1.0, 0.95, 0.85], dtype=np.float32)
    # night sky: urban skyglow brightest at the horizon
    si = S.sky
    if len(si):
        glow = np.array(look["skyglow"], dtype=np.float32) * look["skyglow_power"]
        vv = (si // w + 0.5 - cam.cy) / cam.f
        gz = np.clip(-vv * 3.0, 0, 1).astype(np.float32)
        img[si] = glow * ((1.0 - 0.8 * gz) * (1 + 0.15 * S.noise[2][si]))[:, None]
    return img


def _bloom_splats(S: _Surface, cam: Camera, lights: list[Light], small: np.ndarray) -> None:
    """Add the visible point sources (lamps, head/tail lights, traffic lights) that are not occluded to
    `small`, the bloom source image at 1/4 resolution, in exposure-independent units."""
    h, w = S.shape
    cand = [lt for lt in lights if lt.glow > 0 and lt.pos[2] - cam.z >= NEAR]
    if not cand:
        return
    P = np.array([lt.pos for lt in cand], dtype=np.float64)
    uv = cam.project(P)
    k = np.flatnonzero((uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h))
    if not len(k):
        return
    idx = uv[k, 1].astype(np.int64) * w + uv[k, 0].astype(np.int64)
    t = S.geom.at(idx)[0]
    sh, sw = small.shape[:2]
    for j, i, tt in zip(k.tolist(), idx.tolist(), t.tolist()):
        if tt >= P[j, 2] - cam.z - 1.0:
            lt = cand[j]
            y, x = min(i // w * sh // h, sh - 1), min(i % w * sw // w, sw - 1)
            small[y, x] += np.array(lt.color, dtype=np.float32) * (lt.glow * BLOOM_SPLAT / 16.0)


def _exposure_stats(lin: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    """(subsample of lin, log-mean luminance) from every 7th pixel: enough for auto exposure."""
    sub = lin[::7]
    return sub, float(np.exp(np.mean(np.log(_luma(sub) + eps))))


def expose_night(lin: np.ndarray, S: _Surface, cam: Camera, look: dict, lights: list[Light],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exposure (capped gain), noise, partial white balance, bloom, tone curve -> (HxWx3 uint8, invalid).

    Works in scene-linear units; the exposure gain is applied by the tone curve, so the shot + read noise
    (relative to the signal, sigma^2 = shot/8 * signal + (read/8)^2) does not depend on it, while the
    gain decides what is under-exposed and what saturates."""
    h, w = S.shape
    sub, logmean = _exposure_stats(lin, 1e-4)
    gain = min(look["night_key"] / logmean, look["max_gain"])
    # partial white balance (grey world over the non-saturated pixels of the subsample)
    sel = (_luma(sub) < 0.9 / gain).astype(np.float32)
    m = (sel @ sub) / max(float(sel.sum()), 1.0) + 1e-6
    wb = ((m.mean() / m) ** look["wb"]).astype(np.float32)
    x = lin.reshape(h, w, 3) * wb
    # invalid: noise-free exposed brightness (HSV V) too low to recognise anything
    v_clean = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])
    k = max(3, (w // 128) | 1)
    invalid = cv2.blur(v_clean, (k, k)) < INVALID_V ** 2.2 / gain
    # photon (shot) + read noise, scaled by the luminance; partly low-frequency (tile)
    sig = _luma(x.reshape(-1, 3))
    np.maximum(sig, 0.0, out=sig)
    sig *= look["shot"] / 8.0
    sig += (look["read"] / 8.0) ** 2
    x += _crop(h, w, rng, sensor=True) * cv2.sqrt(sig).reshape(h, w, 1)
    s = w / 512.0
    x = cv2.GaussianBlur(x, (0, 0), 0.35 * s + 0.3)
    # bloom: halos around what saturates (at 1/4 resolution) and around visible point lights
    small = cv2.resize(x, (max(w // 4, 8), max(h // 4, 4)), interpolation=cv2.INTER_AREA)
    small = np.maximum(small - 1.0 / gain, 0.0)
    _bloom_splats(S, cam, lights, small)
    bloom = cv2.addWeighted(cv2.GaussianBlur(small, (0, 0), 1.0 * s + 0.4), BLOOM_NEAR,
                            cv2.GaussianBlur(small, (0, 0), 5.0 * s + 1.0), BLOOM_WIDE, 0.0)
    x += cv2.resize(bloom, (w, h), interpolation=cv2.INTER_LINEAR)
    return _to_uint8(x, gain), invalid


def expose_day(lin: np.ndarray, look: dict, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Auto-exposure on the log-mean luminance, mild sensor noise and softness, tone curve -> HxWx3 uint8."""
    h, w = shape
    gain = look["day_key"] / _exposure_stats(lin, 1e-3)[1]
    x = cv2.scaleAdd(_crop(h, w, rng, sensor=True), 0.003 / gain, lin.reshape(h, w, 3))
    x = cv2.GaussianBlur(x, (0, 0), 0.35 * w / 512.0 + 0.2)
    return _to_uint8(x, gain)


def render(scene: Scene, dyn: int, night: bool, rng: np.random.Generator, camera: Camera | None = None,
           hood: bool = False) -> Frame:
    """Render `scene` with its dynamic set `dyn` by day or by night (optionally from another camera)."""
    cam = camera or scene.camera
    flat = merge(scene.static, scene.dynamics[dyn])
    S = surface(flat, cam, rng, night, scene.look["lit_windows"])
    h, w = S.shape
    label_ids = np.take(flat.label, S.pm).reshape(h, w)
    sources = None
    if night:
        lin = shade_night(S, cam, scene.look, flat.lights)
        img, invalid = expose_night(lin, S, cam, scene.look, flat.lights, rng)
        sources = np.zeros(h * w, dtype=bool)
        for idx, val in S.emission:
            sources[idx[val.max(axis=1) > 0.05]] = True
        sources = sources.reshape(h, w)
    else:
        lin = shade_day(S, cam, scene.look, scene.street)
        img = expose_day(lin, scene.look, rng, (h, w))
        invalid = None
    if hood:
        img, label_ids = _draw_hood(img, label_ids, rng)
        if invalid is not None:
            invalid &= label_ids != L["ego vehicle"]
    train_ids = np.take(LABEL_ID_TO_TRAIN_ID, label_ids)
    return Frame(image=img, label_ids=label_ids, train_ids=train_ids, invalid=invalid, camera=cam, sources=sources)


def _draw_hood(img: np.ndarray, label_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ego vehicle's bonnet at the bottom of Cityscapes frames (labelId 1, ignored in evaluation)."""
    h, w = label_ids.shape
    top = h * rng.uniform(0.9, 0.94)
    xs = np.linspace(-0.05, 1.05, 24)
    ys = top + (h - top) * 0.9 * (2 * xs - 1) ** 4
    pts = np.concatenate([np.stack([xs * w, ys], 1), [[w * 1.05, h + 2], [-0.05 * w, h + 2]]])
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, shift=4)
    m = mask.astype(bool)
    label_ids = label_ids.copy()
    label_ids[m] = L["ego vehicle"]
    img = img.copy()
    reflect = img[::-1].astype(np.float32) * 0.2 + 12.0
    img[m] = np.clip(reflect[m], 0, 255).astype(np.uint8)
    return img, label_ids


__all__ = ["INVALID_V", "Frame", "merge", "rasterize", "render", "surface"]

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from nightseg.classes import LABEL_ID_TO_TRAIN_ID
from nightseg.data.synthetic_scene import (
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


@dataclass
class _Flat:
    """Primitives in painter's order: vertices of all polygons plus per-primitive attribute tables."""

    verts: np.ndarray  # (V, 3) world points of every polygon
    starts: np.ndarray  # (P + 1,) polygon start offsets into verts
    poly_prim: np.ndarray  # (P,) primitive index of each polygon
    attr: np.ndarray  # (n, K) float32 per-primitive attributes, columns _C_*
    label: np.ndarray  # (n,) uint8 Cityscapes labelIds
    params: np.ndarray  # (n, 8) float32 pattern parameters
    emit: np.ndarray  # (n, 3) float32 night emission
    emit_day: np.ndarray  # (n, 3) float32 day emission
    lights: list[Light]
    casters: list[tuple]


_C_ALB, _C_VAL, _C_TEX, _C_SCALE, _C_AXIS, _C_PAT, _C_RETRO = 0, 3, 4, 5, 6, 7, 8


def merge(*sets: PrimSet) -> _Flat:
    """Concatenate primitive sets and sort them into painter's order (sky first)."""
    keys, polys = [], []
    cols: dict[str, list] = {k: [] for k in ("label", "albedo", "axis", "value", "pattern", "params", "tex", "emit",
                                             "emit_day")}
    lights: list[Light] = []
    casters: list[tuple] = []
    for s in sets:
        keys.extend(s.keys)
        polys.extend(s.polys)
        for k in cols:
            cols[k].extend(getattr(s, k))
        lights.extend(s.lights)
        casters.extend(s.casters)
    order = np.array(sorted(range(len(keys)), key=lambda i: (keys[i], i)), dtype=np.int64)
    plist = [p for i in order for p in polys[i]]
    counts = np.array([len(p) for p in plist], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    poly_prim = np.repeat(np.arange(len(order)), [len(polys[i]) for i in order])
    label = np.array(cols["label"], dtype=np.uint8)[order]
    params = np.array(cols["params"], dtype=np.float32)[order]
    n = len(order)
    attr = np.zeros((n, 9), dtype=np.float32)
    attr[:, 0:3] = np.array(cols["albedo"], dtype=np.float32)[order]
    attr[:, _C_VAL] = np.array(cols["value"], dtype=np.float32)[order]
    tex = np.array(cols["tex"], dtype=np.float32)[order]
    attr[:, _C_TEX] = tex[:, 0]
    attr[:, _C_SCALE] = tex[:, 1]
    attr[:, _C_AXIS] = np.array(cols["axis"], dtype=np.float32)[order]
    attr[:, _C_PAT] = np.array(cols["pattern"], dtype=np.float32)[order]
    attr[:, _C_RETRO] = (label == L["traffic sign"]) & (params[:, 0] > 0.5)
    return _Flat(
        verts=np.concatenate(plist) if plist else np.zeros((0, 3)),
        starts=starts,
        poly_prim=poly_prim,
        attr=attr,
        label=label,
        params=params,
        emit=np.array(cols["emit"], dtype=np.float32)[order],
        emit_day=np.array(cols["emit_day"], dtype=np.float32)[order],
        lights=lights,
        casters=casters,
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
    keep = flat.attr[flat.poly_prim, _C_AXIS] != AX_SKY
    if not keep.all():
        idx = np.flatnonzero(keep)
        counts = np.diff(flat.starts)[idx]
        verts = np.concatenate([flat.verts[flat.starts[i]:flat.starts[i + 1]] for i in idx]) if len(idx) else flat.verts[:0]
        starts = np.concatenate([[0], np.cumsum(counts)])
        fill_polys(pm, cam, verts, starts, flat.poly_prim[idx].tolist())
    else:
        fill_polys(pm, cam, flat.verts, flat.starts, flat.poly_prim.tolist())
    return pm


# --- per-pixel geometry, textures and patterns ----------------------------------------------------------------

_TILE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _noise_tiles(h: int, w: int) -> np.ndarray:
    """Unit-variance noise tiles of size (1.5h, 1.5w), fixed seed, cached per size: three smooth textures
    (fine, medium, coarse) and three white-noise planes (sensor noise)."""
    key = (h, w)
    if key not in _TILE_CACHE:
        rng = np.random.default_rng(20240611)
        th, tw = h + h // 2, w + w // 2
        s = w / 512.0
        tiles = []
        for sigma in (0.7 * s, 2.5 * s, 9.0 * s):
            n = rng.standard_normal((th, tw), dtype=np.float32)
            n = cv2.GaussianBlur(n, (0, 0), max(sigma, 0.4), borderType=cv2.BORDER_REFLECT)
            tiles.append(n / (n.std() + 1e-6))
        for _ in range(3):
            tiles.append(rng.standard_normal((th, tw), dtype=np.float32))
        _TILE_CACHE[key] = np.stack(tiles)
    return _TILE_CACHE[key]


def _crop(h: int, w: int, rng: np.random.Generator, which: slice) -> np.ndarray:
    tiles = _noise_tiles(h, w)[which]
    oy, ox = int(rng.integers(0, h // 2 + 1)), int(rng.integers(0, w // 2 + 1))
    return tiles[:, oy:oy + h, ox:ox + w]


def _hash(a: np.ndarray, b: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer triple (vectorised)."""
    x = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (seed.astype(np.int64) * 83492791)
    x = (x ^ (x >> 13)) * 1274126177
    return ((x ^ (x >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


@dataclass
class _Surface:
    """Per-pixel buffers of one frame, flattened to N = H*W (colour buffers are Nx3)."""

    shape: tuple[int, int]
    pm: np.ndarray  # prim index
    flat: _Flat
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    t: np.ndarray  # depth along the optical axis
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray
    sky: np.ndarray  # bool
    albedo: np.ndarray  # Nx3 textured albedo
    emit_day: np.ndarray  # Nx3
    emit_night: np.ndarray  # Nx3
    glass: np.ndarray  # reflective glass weight
    retro: np.ndarray  # retro-reflective sign faces
    vv: np.ndarray  # (y - cy) / f: the ray's downward slope, for the sky gradient
    noise: np.ndarray  # (3, N) smooth noise textures cropped for this frame


def _emission(table: np.ndarray, pm: np.ndarray) -> np.ndarray:
    out = np.zeros((len(pm), 3), dtype=np.float32)
    has = table.any(axis=1)
    if has.any():
        idx = np.flatnonzero(np.take(has, pm))
        out[idx] = np.take(table, pm[idx], axis=0)
    return out


def surface(flat: _Flat, cam: Camera, rng: np.random.Generator, night: bool) -> _Surface:
    """Rasterise and compute per-pixel geometry, textured albedo, patterns and emission."""
    h, w = cam.height, cam.width
    pm = rasterize(flat, cam).ravel()
    g = np.take(flat.attr, pm, axis=0)
    axis = g[:, _C_AXIS]
    val = g[:, _C_VAL]
    dx = np.tile((np.arange(w, dtype=np.float32) - cam.cx + 0.5) / cam.f, h)
    dy = np.repeat((cam.cy - np.arange(h, dtype=np.float32) - 0.5) / cam.f, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(axis == AX_X, (val - cam.x) / dx, np.where(axis == AX_Y, (val - cam.y) / dy, val - cam.z))
    sky = axis == AX_SKY
    t = np.where(sky | ~(t > 0), 1e4, np.minimum(np.maximum(t, NEAR), 1e4)).astype(np.float32)
    X = cam.x + t * dx
    Y = cam.y + t * dy
    Z = cam.z + t
    nx = np.where(axis == AX_X, -np.sign(dx), 0).astype(np.float32)
    ny = (axis == AX_Y).astype(np.float32)
    nz = -(axis == AX_Z).astype(np.float32)

    noise = _crop(h, w, rng, slice(0, 3)).reshape(3, -1)
    scale = g[:, _C_SCALE]
    n_img = np.where(scale == 0, noise[0], np.where(scale == 1, noise[1], noise[2]))
    amp = g[:, _C_TEX] * (0.5 if night else 1.0)
    albedo = g[:, 0:3] * np.clip(1.0 + amp * n_img, 0.2, 2.0)[:, None]
    emit_day = _emission(flat.emit_day, pm) if not night else None
    emit_night = _emission(flat.emit, pm) if night else None
    glass = np.zeros(h * w, dtype=np.float32)
    retro = g[:, _C_RETRO]

    pat = g[:, _C_PAT].astype(np.int8)
    present = np.bincount(pat, minlength=8)
    for code in np.flatnonzero(present).tolist():
        if code == 0:
            continue
        idx = np.flatnonzero(pat == code)
        ax = axis[idx]
        Xi, Yi, Zi = X[idx], Y[idx], Z[idx]
        a = np.where(ax == AX_X, Zi, Xi)
        b = np.where(ax == AX_Y, Zi, Yi)
        prm = np.take(flat.params, pm[idx], axis=0)
        if code == PAT_FACADE:
            _facade(idx, a, b, prm, t[idx], cam, albedo, emit_night, glass, night)
        elif code == PAT_PAVERS:
            fa = np.mod(a / prm[:, 0], 1.0)
            fb = np.mod(b / prm[:, 1], 1.0)
            joint = ((fa < 0.07) | (fb < 0.07)) & (t[idx] < 25)
            albedo[idx] *= np.where(joint, 1.0 - 0.35 * prm[:, 2], 1.0)[:, None]
        elif code == PAT_FENCE:
            spacing, hgt, density = prm[:, 1], prm[:, 2], prm[:, 3]
            fa = np.mod(a / spacing, 1.0)
            pix = spacing * cam.f / t[idx]
            solid = (fa < density) | (b > hgt - 0.08) | (np.abs(b - hgt * 0.15) < 0.05)
            mix = np.where(pix > 2.5, np.where(solid, 1.0, 0.3), 0.3 + 0.7 * density)
            albedo[idx] *= mix[:, None]
        elif code == PAT_LEAVES:
            leaf = np.clip(0.55 + 0.35 * noise[0][idx] + 0.25 * noise[1][idx], 0.15, 1.6)
            albedo[idx] *= leaf[:, None]
            albedo[idx, 1] *= np.clip(1.0 + 0.15 * noise[2][idx], 0.7, 1.3)
        elif code == PAT_GLASS:
            glass[idx] = 0.6
            if night:
                emit_night[idx] += np.array([0.12, 0.11, 0.08], dtype=np.float32)
    vv = np.repeat((np.arange(h, dtype=np.float32) + 0.5 - cam.cy) / cam.f, w)
    return _Surface((h, w), pm, flat, X, Y, Z, t, nx, ny, nz, sky, albedo, emit_day, emit_night, glass, retro, vv,
                    noise)


def _facade(idx, a, b, prm, t, cam, albedo, emit_night, glass, night: bool) -> None:
    """Windows, shop fronts and cornices on a building facade, in facade coordinates (metres)."""
    origin, spacing, floor_h, ww, wh, shop, hgt, seed = (prm[:, k] for k in range(8))
    ap = a - origin
    colf = ap / spacing
    col = np.floor(colf)
    fa = colf - col
    gf = floor_h * 1.25
    rowf = (b - gf) / floor_h
    row = np.floor(rowf)
    fb = rowf - row
    shop_b = shop > 0.5
    win = (b >= gf) & (b < hgt - 0.9) & (np.abs(fa - 0.5) < ww * 0.5) & (fb > 0.25) & (fb < 0.25 + wh)
    shopwin = shop_b & (b > 0.35) & (b < gf - 0.55) & (np.abs(fa - 0.5) < 0.43)
    door = ~shop_b & (b < 2.2) & (np.abs(fa - 0.5) < 0.18) & (np.mod(col, 3) == 1)
    band = shop_b & (b >= gf - 0.5) & (b < gf - 0.1)
    cornice = (b > hgt - 0.5) | (np.abs(b - gf) < 0.1)
    # fade the window grid where it would alias (windows smaller than ~1.5 px): the facade just looks dimmer
    pix = np.minimum(spacing * ww, floor_h * wh) * (cam.f / t)
    vis = np.clip((pix - 1.0) * (1 / 1.5), 0.0, 1.0)
    h_tint = _hash(col + 7, row + 3, seed)
    sub = albedo[idx]
    any_glass = win | shopwin | door
    mixw = np.where(shopwin | door, 1.0, vis) * any_glass
    glass_col = (0.05 + 0.05 * h_tint)[:, None] * np.array([1.0, 1.15, 1.35], dtype=np.float32)
    sub = sub * (1 - mixw)[:, None] + glass_col * mixw[:, None]
    sub *= (1.0 - 0.25 * (1 - vis) * ww * wh - 0.25 * cornice)[:, None]
    if band.any():
        bi = np.flatnonzero(band)
        sign = np.stack([_hash(col[bi], col[bi] * 0 + k, seed[bi]) for k in (1, 2, 3)], axis=1) * 0.6 + 0.05
        sub[bi] = sign
    albedo[idx] = sub
    glass[idx] = np.maximum(glass[idx], any_glass * 0.8)
    if night:
        e = np.zeros_like(sub)
        lit = win & (_hash(col, row, seed) < 0.25)
        if lit.any():
            li = np.flatnonzero(lit)
            ht = h_tint[li]
            warm = np.stack([np.ones_like(ht), 0.75 + 0.2 * ht, 0.45 + 0.4 * ht], axis=1)
            e[li] = (0.25 + 0.6 * _hash(col[li] + 3, row[li] + 5, seed[li]))[:, None] * warm * vis[li, None]
        shop_lit = shopwin & (_hash(col, col * 0, seed + 11) < 0.7)
        if shop_lit.any():
            si = np.flatnonzero(shop_lit)
            ht = h_tint[si]
            e[si] = 1.6 * np.stack([np.ones_like(ht), 0.8 + 0.15 * ht, 0.55 + 0.4 * ht], axis=1)
        if band.any():
            on = band & (_hash(col, col * 0, seed + 5) < 0.5)
            e[on] = sub[on] * 2.5
        emit_night[idx] += e


# --- shading -----------------------------------------------------------------------------------------------

_GAMMA_LUT = np.clip(np.power(np.linspace(0.0, 1.0, 4096), 1 / 2.2) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Linear [0, 1] (clipped) to 8-bit sRGB-like values through a 12-bit lookup table."""
    return np.take(_GAMMA_LUT, np.clip(x * 4095.0 + 0.5, 0, 4095).astype(np.int16))


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.2126 + x[..., 1] * 0.7152 + x[..., 2] * 0.0722


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
    """1 where the sun is blocked: the building height profile along the sun ray, plus caster shadows."""
    sx, sy, sz = look["sun"]
    h, w = S.shape
    side = -1 if sx < 0 else 1
    xb = street["sides"][side]["x_bld"]
    hb = street["sides"][side]["hb"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (xb - S.X) * (1.0 / sx)
    yc = S.Y + ts * sy
    zc = np.clip(S.Z + ts * sz, 0, len(hb) - 1).astype(np.int32)
    blocked = ((S.X - xb) * side < -0.25) & (ts > 0) & (yc < np.take(hb, zc)) & ~S.sky
    shade = blocked.astype(np.float32).reshape(h, w)
    polys = _caster_polys(S.flat.casters, look["sun"])
    if polys:
        canvas = np.zeros((h, w), dtype=np.float32)
        starts = np.concatenate([[0], np.cumsum([len(p) for p in polys])])
        fill_polys(canvas, cam, np.concatenate(polys), starts, [1.0] * len(polys))
        ground = ((S.ny > 0) & (S.Y < 0.3)).reshape(h, w)
        shade = np.maximum(shade, canvas * ground)
    return cv2.blur(shade, (3, 3)).ravel()


def shade_day(S: _Surface, cam: Camera, look: dict, street: dict) -> np.ndarray:
    """Return the linear-light day image (Nx3, before exposure): sun + sky light, sky gradient, clouds."""
    sx, sy, sz = look["sun"]
    sky_col = np.array(look["sky_top"], dtype=np.float32)
    sky_col = sky_col / sky_col.mean() * 0.5 + 0.5
    E_sky = look["sky_power"] * (0.45 + 0.55 * S.ny)
    if look["sunny"]:
        cos = np.maximum(S.nx * sx + S.ny * sy + S.nz * sz, 0.0)
        sun = look["sun_power"] * cos * (1.0 - _shadow(S, cam, look, street))
        E = sun[:, None] * np.array([1.0, 0.97, 0.9], dtype=np.float32) + E_sky[:, None] * sky_col
    else:
        E = E_sky[:, None] * sky_col
    img = S.albedo * E + S.emit_day
    img += (S.glass * (0.17 * look["sky_power"]))[:, None] * sky_col
    # sky: bright horizon to zenith colour, with clouds
    si = np.flatnonzero(S.sky)
    if len(si):
        top = np.array(look["sky_top"], dtype=np.float32) * 2.6
        horizon = np.full(3, 2.4 if look["sunny"] else 2.2, dtype=np.float32)
        gz = np.clip(-S.vv[si] * 2.2, 0, 1)[:, None]
        sky = horizon * (1 - gz) + top * gz
        clouds = np.clip(S.noise[2][si] * 0.5 + 0.3, 0, 1)[:, None] * (0.5 if look["sunny"] else 0.25)
        img[si] = sky * (1 - clouds) + clouds * 2.6
    return img * np.array(look["day_tint"], dtype=np.float32)


def _ego_lights(cam: Camera, look: dict) -> list[Light]:
    return [Light((cam.x + sxo * 0.75, 0.7, cam.z + 0.5), (1.0, 0.96, 0.9), 40.0 * look["ego_lights"],
                  direction=(0.0, -0.05, 1.0), exponent=12.0) for sxo in (-1, 1)]


def _lights_field(S: _Surface, lights: list[Light], cam: Camera, step: int) -> np.ndarray:
    """Irradiance (Nx3) from all lights, evaluated every `step` pixels and upsampled bilinearly."""
    h, w = S.shape
    sl = (slice(step // 2, None, step), slice(step // 2, None, step))

    def sub(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(h, w)[sl])

    X, Y, Z, nx, ny, nz = (sub(a) for a in (S.X, S.Y, S.Z, S.nx, S.ny, S.nz))
    E = np.zeros(X.shape + (3,), dtype=np.float32)
    for lt in lights:
        if not lt.illuminates or lt.intensity <= 0 or lt.pos[2] - cam.z > 160:
            continue
        px, py, pz = lt.pos
        lx, ly, lz = px - X, py - Y, pz - Z
        d2 = lx * lx + ly * ly + lz * lz
        inv = 1.0 / np.sqrt(d2 + 1e-6)
        f = np.maximum((nx * lx + ny * ly + nz * lz) * inv, 0.0) * (lt.intensity / (d2 + 1.0))
        if lt.direction is not None and lt.exponent > 0:
            dx, dy, dz = lt.direction
            dn = 1.0 / math.sqrt(dx * dx + dy * dy + dz * dz)
            f *= np.maximum(-(dx * lx + dy * ly + dz * lz) * (inv * dn), 0.0) ** lt.exponent
        E += f[..., None] * np.array(lt.color, dtype=np.float32)
    return cv2.resize(E, (w, h), interpolation=cv2.INTER_LINEAR).reshape(-1, 3)


def shade_night(S: _Surface, cam: Camera, look: dict, lights: list[Light]) -> np.ndarray:
    """Return the linear-light night image (Nx3, before exposure)."""
    h, w = S.shape
    E = _lights_field(S, list(lights) + _ego_lights(cam, look), cam, max(1, int(round(w / 192))))
    E += (0.5 + 0.5 * S.ny)[:, None] * (look["ambient"] * np.array(look["ambient_color"], dtype=np.float32))
    img = S.albedo * E + S.emit_night
    # retro-reflective sign faces shine back at the ego headlights
    ri = np.flatnonzero(S.retro)
    if len(ri):
        img[ri] += (0.08 * look["ego_lights"] * np.clip(30.0 / S.t[ri], 0, 3))[:, None] * np.array(
            [1.0, 0.95, 0.85], dtype=np.float32)
    # night sky: urban skyglow brightest at the horizon
    si = np.flatnonzero(S.sky)
    if len(si):
        glow = np.array(look["skyglow"], dtype=np.float32) * look["skyglow_power"]
        gz = np.clip(-S.vv[si] * 3.0, 0, 1)
        img[si] = glow * ((1.0 - 0.8 * gz) * (1 + 0.15 * S.noise[2][si]))[:, None]
    return img


def _bloom_sources(S: _Surface, cam: Camera, lights: list[Light], gain: float) -> np.ndarray:
    """Point sources (visible lamps, head/tail lights) splatted where they are not occluded (HxWx3)."""
    h, w = S.shape
    out = np.zeros((h, w, 3), dtype=np.float32)
    t = S.t.reshape(h, w)
    for lt in lights:
        zc = lt.pos[2] - cam.z
        if lt.glow <= 0 or zc < NEAR:
            continue
        u, v = cam.project(np.array([lt.pos]))[0]
        iu, iv = int(u), int(v)
        if 0 <= iu < w and 0 <= iv < h and t[iv, iu] >= zc - 1.0:
            out[iv, iu] += lt.glow * np.array(lt.color, dtype=np.float32) * gain * (20.0 / max(zc, 5.0))
    return out


def expose_night(lin: np.ndarray, S: _Surface, cam: Camera, look: dict, lights: list[Light],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exposure (capped gain), noise, partial white balance, bloom, tone curve -> (HxWx3 uint8, invalid)."""
    h, w = S.shape
    lum = _luma(lin)
    gain = min(look["night_key"] / float(np.exp(np.mean(np.log(lum + 1e-4)))), look["max_gain"])
    # partial white balance (grey world over non-saturated pixels)
    m = lin[lum * gain < 0.9].mean(axis=0) + 1e-6
    wb = ((m.mean() / m) ** look["wb"]).astype(np.float32)
    x = (lin * (wb * gain)).reshape(h, w, 3)
    # invalid: noise-free brightness too low to recognise anything
    v_clean = x.max(axis=2)
    k = max(3, (w // 128) | 1)
    invalid = cv2.blur(v_clean, (k, k)) < INVALID_V ** 2.2
    # shot + read noise, amplified by the gain; part fine, part low-frequency (after the camera's denoiser)
    white = _crop(h, w, rng, slice(3, 6))
    sigma = np.sqrt(look["shot"] * gain / 8.0 * np.maximum(x, 0) + (look["read"] * gain / 8.0) ** 2)
    low = cv2.resize(np.ascontiguousarray(white[:, : h // 2 + 1, : w // 2 + 1].transpose(1, 2, 0)), (w, h),
                     interpolation=cv2.INTER_LINEAR)
    x = x + sigma * (0.6 * white.transpose(1, 2, 0) + 0.8 * low)
    s = w / 512.0
    x = cv2.GaussianBlur(x, (0, 0), 0.5 * s + 0.3)
    # bloom around everything that saturates and around visible point lights
    src = np.maximum(x - 1.0, 0.0) + _bloom_sources(S, cam, lights, gain * float(wb.mean()))
    small = cv2.resize(src, (max(w // 4, 8), max(h // 4, 4)), interpolation=cv2.INTER_AREA)
    bloom = 0.35 * cv2.GaussianBlur(small, (0, 0), 1.2 * s + 0.5) + 0.25 * cv2.GaussianBlur(small, (0, 0), 5.0 * s + 1.0)
    x = x + cv2.resize(bloom, (w, h), interpolation=cv2.INTER_LINEAR) * 6.0
    return _to_uint8(x), invalid


def expose_day(lin: np.ndarray, look: dict, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Auto-exposure on the log-mean luminance, mild sensor noise and softness, tone curve -> HxWx3 uint8."""
    h, w = shape
    gain = look["day_key"] / float(np.exp(np.mean(np.log(_luma(lin) + 1e-3))))
    x = (lin * gain).reshape(h, w, 3)
    white = _crop(h, w, rng, slice(3, 6)).transpose(1, 2, 0)
    x = x + white * (0.004 * np.sqrt(np.maximum(x, 0) + 0.01))
    x = cv2.GaussianBlur(x, (0, 0), 0.35 * w / 512.0 + 0.2)
    return _to_uint8(x)


def render(scene: Scene, dyn: int, night: bool, rng: np.random.Generator, camera: Camera | None = None,
           hood: bool = False) -> Frame:
    """Render `scene` with its dynamic set `dyn` by day or by night (optionally from another camera)."""
    cam = camera or scene.camera
    flat = merge(scene.static, scene.dynamics[dyn])
    S = surface(flat, cam, rng, night)
    h, w = S.shape
    label_ids = np.take(flat.label, S.pm).reshape(h, w)
    if night:
        lin = shade_night(S, cam, scene.look, flat.lights)
        img, invalid = expose_night(lin, S, cam, scene.look, flat.lights, rng)
    else:
        lin = shade_day(S, cam, scene.look, scene.street)
        img = expose_day(lin, scene.look, rng, (h, w))
        invalid = None
    if hood:
        img, label_ids = _draw_hood(img, label_ids, rng)
        if invalid is not None:
            invalid &= label_ids != L["ego vehicle"]
    train_ids = np.take(LABEL_ID_TO_TRAIN_ID, label_ids)
    return Frame(image=img, label_ids=label_ids, train_ids=train_ids, invalid=invalid, camera=cam)


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

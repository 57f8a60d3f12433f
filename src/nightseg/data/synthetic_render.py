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
    L,
    PAT_FACADE,
    PAT_FENCE,
    PAT_GLASS,
    PAT_LEAVES,
    PAT_PAVERS,
    Camera,
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
    polys: list[list[np.ndarray]]
    label: np.ndarray
    albedo: np.ndarray
    axis: np.ndarray
    value: np.ndarray
    pattern: np.ndarray
    params: np.ndarray
    tex: np.ndarray
    tex_scale: np.ndarray
    emit: np.ndarray
    emit_day: np.ndarray
    lights: list[Light]
    casters: list[tuple]


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
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    tex = np.array(cols["tex"], dtype=np.float32)[order] if order else np.zeros((0, 2), np.float32)
    return _Flat(
        polys=[polys[i] for i in order],
        label=np.array(cols["label"], dtype=np.uint8)[order],
        albedo=np.array(cols["albedo"], dtype=np.float32)[order],
        axis=np.array(cols["axis"], dtype=np.int8)[order],
        value=np.array(cols["value"], dtype=np.float32)[order],
        pattern=np.array(cols["pattern"], dtype=np.int8)[order],
        params=np.array(cols["params"], dtype=np.float32)[order],
        tex=tex[:, 0],
        tex_scale=tex[:, 1].astype(np.int8),
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


def _fill(canvas: np.ndarray, cam: Camera, polys: list[np.ndarray], value: int) -> None:
    zmin = cam.z + NEAR
    h, w = canvas.shape[:2]
    pts2 = []
    for p in polys:
        if p[:, 2].min() < zmin:
            p = _clip_near(p, zmin)
            if len(p) < 3:
                continue
        uv = cam.project(p)
        if uv[:, 0].max() < -1 or uv[:, 0].min() > w + 1 or uv[:, 1].max() < -1 or uv[:, 1].min() > h + 1:
            continue
        pts2.append(np.clip(np.round((uv - 0.5) * 16), -(1 << 24), 1 << 24).astype(np.int32))
    for q in pts2:
        cv2.fillPoly(canvas, [q], value, lineType=cv2.LINE_8, shift=4)


def rasterize(flat: _Flat, cam: Camera) -> np.ndarray:
    """Return the HxW int32 map of primitive indices (painter's order; the sky, index 0, is the background)."""
    pm = np.zeros((cam.height, cam.width), dtype=np.int32)
    for i, polys in enumerate(flat.polys):
        if flat.axis[i] == AX_SKY:
            continue
        _fill(pm, cam, polys, i)
    return pm


# --- per-pixel geometry, textures and patterns ----------------------------------------------------------------

_TILE_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _noise_tiles(h: int, w: int) -> np.ndarray:
    """Three unit-variance noise tiles (fine, medium, coarse) of size (1.5h, 1.5w), fixed seed, cached."""
    key = (h, w)
    if key not in _TILE_CACHE:
        rng = np.random.default_rng(20240611)
        th, tw = h + h // 2, w + w // 2
        s = w / 512.0
        tiles = []
        for sigma in (0.7 * s, 2.5 * s, 9.0 * s):
            n = rng.standard_normal((th, tw)).astype(np.float32)
            n = cv2.GaussianBlur(n, (0, 0), max(sigma, 0.4), borderType=cv2.BORDER_REFLECT)
            tiles.append(n / (n.std() + 1e-6))
        _TILE_CACHE[key] = np.stack(tiles)
    return _TILE_CACHE[key]


def _crop_tiles(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    tiles = _noise_tiles(h, w)
    oy, ox = int(rng.integers(0, h // 2 + 1)), int(rng.integers(0, w // 2 + 1))
    return tiles[:, oy:oy + h, ox:ox + w]


def _hash(a: np.ndarray, b: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer triple (vectorised)."""
    x = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (seed.astype(np.int64) * 83492791)
    x = (x ^ (x >> 13)) * 1274126177
    return ((x ^ (x >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


@dataclass
class _Surface:
    pm: np.ndarray  # prim map
    flat: _Flat
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    t: np.ndarray
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray
    sky: np.ndarray  # bool mask
    albedo: np.ndarray  # HxWx3 textured albedo
    emit_day: np.ndarray  # HxWx3
    emit_night: np.ndarray  # HxWx3
    glass: np.ndarray  # HxW float: reflective glass weight
    retro: np.ndarray  # HxW float: retro-reflective sign faces
    vv: np.ndarray  # normalised image row (0 top .. 1 bottom) for the sky gradient
    noise: np.ndarray  # the three noise tiles cropped for this frame


def surface(flat: _Flat, cam: Camera, rng: np.random.Generator, night: bool) -> _Surface:
    """Rasterise and compute per-pixel geometry, textured albedo, patterns and emission."""
    h, w = cam.height, cam.width
    pm = rasterize(flat, cam)
    u = (np.arange(w, dtype=np.float32) - cam.cx + 0.5) / cam.f
    v = (cam.cy - np.arange(h, dtype=np.float32) - 0.5) / cam.f
    dx = np.broadcast_to(u[None, :], (h, w))
    dy = np.broadcast_to(v[:, None], (h, w))
    axis = flat.axis[pm]
    val = flat.value[pm]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(axis == AX_X, (val - cam.x) / dx,
                     np.where(axis == AX_Y, (val - cam.y) / dy, val - cam.z))
    sky = axis == AX_SKY
    t = np.where(sky | ~np.isfinite(t) | (t <= 0), 1e4, np.clip(t, NEAR, 1e4)).astype(np.float32)
    X = cam.x + t * dx
    Y = cam.y + t * dy
    Z = cam.z + t
    nx = np.where(axis == AX_X, -np.sign(dx), 0).astype(np.float32)
    ny = (axis == AX_Y).astype(np.float32)
    nz = np.where(axis == AX_Z, -1.0, 0.0).astype(np.float32)

    noise = _crop_tiles(h, w, rng)
    scale = flat.tex_scale[pm]
    n_img = np.where(scale == 0, noise[0], np.where(scale == 1, noise[1], noise[2]))
    amp = flat.tex[pm] * (0.5 if night else 1.0)
    albedo = flat.albedo[pm] * np.clip(1.0 + amp * n_img, 0.2, 2.0)[..., None]
    emit_day = flat.emit_day[pm]
    emit_night = flat.emit[pm].copy()
    glass = np.zeros((h, w), dtype=np.float32)
    retro = ((flat.label[pm] == L["traffic sign"]) & (flat.params[pm, 0] > 0.5)).astype(np.float32)

    pat = flat.pattern[pm]
    # plane coordinates (a along the surface, b = height or depth)
    for code in np.unique(pat):
        if code == 0:
            continue
        idx = np.nonzero(pat == code)
        ax = axis[idx]
        a = np.where(ax == AX_X, Z[idx], X[idx])
        b = np.where(ax == AX_Y, Z[idx], Y[idx])
        prm = flat.params[pm[idx]]
        if code == PAT_FACADE:
            _facade(idx, a, b, prm, t[idx], cam, albedo, emit_night, glass, night)
        elif code == PAT_PAVERS:
            fa = np.mod(a / prm[:, 0], 1.0)
            fb = np.mod(b / prm[:, 1], 1.0)
            joint = ((fa < 0.07) | (fb < 0.07)) & (t[idx] < 25)
            albedo[idx] *= np.where(joint, 1.0 - 0.35 * prm[:, 2], 1.0)[:, None]
        elif code == PAT_FENCE:
            bar_w, spacing, hgt, density = prm[:, 0], prm[:, 1], prm[:, 2], prm[:, 3]
            fa = np.mod(a / spacing, 1.0)
            pix = spacing * cam.f / t[idx]
            solid = (fa < density) | (b > hgt - 0.08) | (np.abs(b - hgt * 0.15) < 0.05)
            mix = np.where(pix > 2.5, np.where(solid, 1.0, 0.3), 0.3 + 0.7 * density)
            albedo[idx] *= mix[:, None]
            del bar_w
        elif code == PAT_LEAVES:
            n_f = noise[0][idx]
            n_m = noise[1][idx]
            leaf = np.clip(0.55 + 0.35 * n_f + 0.25 * n_m, 0.15, 1.6)
            albedo[idx] *= leaf[:, None]
            albedo[idx[0], idx[1], 1] *= np.clip(1.0 + 0.15 * noise[2][idx], 0.7, 1.3)
        elif code == PAT_GLASS:
            glass[idx] = 0.6
            if night:
                emit_night[idx] += np.array([0.12, 0.11, 0.08], dtype=np.float32)
    vv = np.broadcast_to(((np.arange(h, dtype=np.float32) + 0.5 - cam.cy) / cam.f)[:, None], (h, w))
    return _Surface(pm, flat, X, Y, Z, t, nx, ny, nz, sky, albedo, emit_day, emit_night, glass, retro, vv, noise)


def _facade(idx, a, b, prm, t, cam, albedo, emit_night, glass, night: bool) -> None:
    """Windows, shop fronts and cornices on a building facade, in facade coordinates (metres)."""
    origin, spacing, floor_h, ww, wh, shop, hgt, seed = (prm[:, k] for k in range(8))
    ap = a - origin
    col = np.floor(ap / spacing)
    fa = ap / spacing - col
    gf = floor_h * 1.25
    row = np.floor((b - gf) / floor_h)
    fb = (b - gf) / floor_h - row
    upper = (b >= gf) & (b < hgt - 0.9)
    win = upper & (np.abs(fa - 0.5) < ww / 2) & (fb > 0.25) & (fb < 0.25 + wh)
    shopwin = (shop > 0.5) & (b > 0.35) & (b < gf - 0.55) & (np.abs(fa - 0.5) < 0.43)
    door = (shop < 0.5) & (b < 2.2) & (np.abs(fa - 0.5) < 0.18) & (np.mod(col, 3) == 1)
    band = (shop > 0.5) & (b >= gf - 0.5) & (b < gf - 0.1)
    cornice = (b > hgt - 0.5) | ((b > gf - 0.1) & (b < gf + 0.1))
    # fade the window grid where it would alias (windows smaller than ~1.5 px)
    pix = np.minimum(spacing * ww, floor_h * wh) * cam.f / t
    vis = np.clip((pix - 1.0) / 1.5, 0.0, 1.0)
    h_lit = _hash(col, row, seed)
    h_tint = _hash(col + 7, row + 3, seed)
    sub = albedo[idx]
    glass_col = np.stack([0.05 + 0.05 * h_tint, 0.06 + 0.05 * h_tint, 0.07 + 0.06 * h_tint], axis=1)
    sign_col = np.stack([_hash(col, row * 0 + 1, seed), _hash(col, row * 0 + 2, seed),
                         _hash(col, row * 0 + 3, seed)], axis=1) * 0.6 + 0.05
    any_glass = (win | shopwin | door)
    mixw = (any_glass * np.where(shopwin | door, 1.0, vis))[:, None]
    sub = sub * (1 - mixw) + glass_col * mixw
    sub = np.where(band[:, None], sign_col, sub)
    sub = np.where(cornice[:, None], sub * 0.75, sub)
    # average darkening where the grid fades (windows too small to see): facade looks dimmer with depth
    sub = sub * (1.0 - 0.25 * (1 - vis) * (ww * wh))[:, None]
    albedo[idx] = sub
    glass[idx] = np.maximum(glass[idx], (any_glass * 0.8).astype(np.float32))
    if night:
        lit_p = 0.25 + 0.0 * seed
        lit = win & (h_lit < lit_p)
        warm = np.stack([np.ones_like(h_tint), 0.75 + 0.2 * h_tint, 0.45 + 0.4 * h_tint], axis=1)
        e = (lit * (0.25 + 0.6 * _hash(col + 3, row + 5, seed)))[:, None] * warm
        shop_lit = shopwin & (_hash(col, row * 0, seed + 11) < 0.7)
        e = e + (shop_lit * 1.6)[:, None] * warm
        e = e + (band & (_hash(col, row * 0, seed + 5) < 0.5))[:, None] * sign_col * 2.5
        emit_night[idx] += e.astype(np.float32)


# --- shading -----------------------------------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.power(np.clip(x, 0.0, 1.0), 1 / 2.2) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _luma(x: np.ndarray) -> np.ndarray:
    return x[..., 0] * 0.2126 + x[..., 1] * 0.7152 + x[..., 2] * 0.0722


def _shadow_mask(S: _Surface, cam: Camera, look: dict, street: dict) -> np.ndarray:
    """1 where the sun is blocked: building profiles along the sun ray plus projected caster shadows."""
    sx, sy, sz = look["sun"]
    h, w = S.pm.shape
    shade = np.zeros((h, w), dtype=np.float32)
    # buildings on the sun side
    side = -1 if sx < 0 else 1
    xb = street["sides"][side]["x_bld"]
    hb = street["sides"][side]["hb"]
    away = (S.X - xb) * side < -0.25  # points between the facade line and the far side
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (xb - S.X) / sx
        yc = S.Y + ts * sy
        zc = np.clip(S.Z + ts * sz, 0, len(hb) - 1).astype(np.int32)
    blocked = away & (ts > 0) & (yc < hb[zc]) & ~S.sky
    shade[blocked] = 1.0
    # caster shadows onto the ground
    canvas = np.zeros((h, w), dtype=np.uint8)
    kx, kz = -sx / sy, -sz / sy
    polys = []
    for c in S.flat.casters:
        if c[0] == "blob":
            _, x, z, r, hc = c
            x2, z2 = x + kx * hc, z + kz * hc
            a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            polys.append(np.stack([x2 + r * np.cos(a), np.zeros(12), z2 + r * np.sin(a) * 1.2], axis=1))
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
            hull = cv2.convexHull(np.concatenate([base, top]).astype(np.float32))[:, 0]
            polys.append(np.stack([hull[:, 0], np.zeros(len(hull)), hull[:, 1]], axis=1).astype(np.float64))
    if polys:
        _fill(canvas, cam, polys, 1)
        ground = (S.ny > 0) & (S.Y < 0.3)
        shade = np.maximum(shade, (canvas > 0) & ground)
    return cv2.blur(shade, (3, 3)) if w >= 256 else shade


def shade_day(S: _Surface, cam: Camera, look: dict, street: dict, rng: np.random.Generator) -> np.ndarray:
    """Return the linear-light day image (before exposure) of a prepared surface."""
    sx, sy, sz = look["sun"]
    cos = np.maximum(S.nx * sx + S.ny * sy + S.nz * sz, 0.0)
    if look["sunny"]:
        shadow = _shadow_mask(S, cam, look, street)
        sun = look["sun_power"] * cos * (1.0 - shadow)
    else:
        sun = np.zeros_like(cos)
    skyl = look["sky_power"] * (0.45 + 0.55 * S.ny)
    sun_col = np.array([1.0, 0.97, 0.9], dtype=np.float32)
    sky_col = np.array(look["sky_top"], dtype=np.float32)
    sky_col = sky_col / sky_col.mean() * 0.5 + 0.5
    E = sun[..., None] * sun_col + skyl[..., None] * sky_col
    img = S.albedo * E + S.emit_day
    # glass reflects the sky
    img += (S.glass * 0.5 * look["sky_power"])[..., None] * sky_col * 0.35
    # sky: gradient from a bright horizon to the zenith colour, with clouds
    top = np.array(look["sky_top"], dtype=np.float32) * 2.6
    horizon = np.array([1.0, 1.0, 1.0], dtype=np.float32) * (2.4 if look["sunny"] else 2.2)
    g = np.clip(-S.vv * 2.2, 0, 1)[..., None]
    sky = horizon * (1 - g) + top * g
    clouds = np.clip(S.noise[2] * 0.5 + 0.3, 0, 1)[..., None] * (0.5 if look["sunny"] else 0.25)
    sky = sky * (1 - clouds) + clouds * 2.6
    img = np.where(S.sky[..., None], sky, img)
    return img * np.array(look["day_tint"], dtype=np.float32)


def _lights_field(S: _Surface, lights: list[Light], cam: Camera, look: dict, step: int) -> np.ndarray:
    """Irradiance from all lights (plus ego headlights), evaluated every `step` pixels and upsampled."""
    sl = (slice(step // 2, None, step), slice(step // 2, None, step))
    X, Y, Z = S.X[sl], S.Y[sl], S.Z[sl]
    nx, ny, nz = S.nx[sl], S.ny[sl], S.nz[sl]
    E = np.zeros(X.shape + (3,), dtype=np.float32)
    ego = look["ego_lights"]
    allights = list(lights) + [
        Light((cam.x + sxo * 0.75, 0.7, cam.z + 0.5), (1.0, 0.96, 0.9), 40.0 * ego, direction=(0.0, -0.05, 1.0),
              exponent=12.0)
        for sxo in (-1, 1)
    ]
    for lt in allights:
        if not lt.illuminates or lt.intensity <= 0:
            continue
        px, py, pz = lt.pos
        if pz - cam.z > 160:
            continue
        lx, ly, lz = px - X, py - Y, pz - Z
        d2 = lx * lx + ly * ly + lz * lz
        inv = 1.0 / np.sqrt(d2 + 1e-6)
        cos = np.maximum((nx * lx + ny * ly + nz * lz) * inv, 0.0)
        f = lt.intensity * cos / (d2 + 1.0)
        if lt.direction is not None and lt.exponent > 0:
            dx, dy, dz = lt.direction
            dn = math.sqrt(dx * dx + dy * dy + dz * dz)
            c = np.maximum(-(dx * lx + dy * ly + dz * lz) * inv / dn, 0.0)
            f = f * c ** lt.exponent
        E += f[..., None] * np.array(lt.color, dtype=np.float32)
    full = cv2.resize(E, (S.pm.shape[1], S.pm.shape[0]), interpolation=cv2.INTER_LINEAR)
    return full


def shade_night(S: _Surface, cam: Camera, look: dict, lights: list[Light]) -> np.ndarray:
    """Return the linear-light night image (before exposure) of a prepared surface."""
    h, w = S.pm.shape
    step = max(1, int(round(w / 192)))
    E = _lights_field(S, lights, cam, look, step)
    amb = look["ambient"] * np.array(look["ambient_color"], dtype=np.float32)
    E = E + (0.5 + 0.5 * S.ny)[..., None] * amb
    # retro-reflective sign faces shine back at the ego headlights
    img = S.albedo * E + S.emit_night
    img += (S.retro * 0.08 * look["ego_lights"])[..., None] * np.array([1.0, 0.95, 0.85], dtype=np.float32) * (
        np.clip(30.0 / S.t, 0, 3))[..., None]
    # night sky: urban skyglow brightest at the horizon
    glow = np.array(look["skyglow"], dtype=np.float32) * look["skyglow_power"]
    g = np.clip(-S.vv * 3.0, 0, 1)[..., None]
    sky = glow * (1.0 - 0.8 * g) * (1 + 0.15 * S.noise[2][..., None])
    img = np.where(S.sky[..., None], sky, img)
    return img


def _bloom_sources(S: _Surface, cam: Camera, lights: list[Light], gain: float) -> np.ndarray:
    """Point sources (visible lamps, head/tail lights) splatted where they are not occluded."""
    h, w = S.pm.shape
    out = np.zeros((h, w, 3), dtype=np.float32)
    for lt in lights:
        if lt.glow <= 0:
            continue
        p = np.array([lt.pos])
        zc = p[0, 2] - cam.z
        if zc < NEAR:
            continue
        u, v = cam.project(p)[0]
        iu, iv = int(u), int(v)
        if not (0 <= iu < w and 0 <= iv < h):
            continue
        if S.t[iv, iu] < zc - 1.0:  # something in front of the light
            continue
        out[iv, iu] += lt.glow * np.array(lt.color, dtype=np.float32) * gain * (20.0 / max(zc, 5.0))
    return out


def expose_night(lin: np.ndarray, S: _Surface, cam: Camera, look: dict, lights: list[Light],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Exposure, noise, white balance, bloom and tone curve; returns (uint8 image, invalid mask)."""
    h, w = S.pm.shape
    lum = _luma(lin)
    gain = min(look["night_key"] / float(np.exp(np.mean(np.log(lum + 1e-4)))), look["max_gain"])
    x = lin * gain
    # partial white balance (grey world over non-saturated pixels)
    m = x[_luma(x) < 0.9].reshape(-1, 3).mean(axis=0) + 1e-6
    wb = (m.mean() / m) ** look["wb"]
    x = x * wb.astype(np.float32)
    # invalid: noise-free brightness too low
    v_clean = np.power(np.clip(x.max(axis=2), 0, 1), 1 / 2.2)
    k = max(3, (w // 128) | 1)
    invalid = cv2.blur(v_clean, (k, k)) < INVALID_V
    # noise: shot + read, part fine and part low-frequency (after the camera's denoiser)
    sigma = np.sqrt(look["shot"] * gain / 8.0 * np.clip(x, 0, None) + (look["read"] * gain / 8.0) ** 2)
    fine = rng.standard_normal((h, w, 3), dtype=np.float32)
    low = rng.standard_normal((h // 2 + 1, w // 2 + 1, 3), dtype=np.float32)
    low = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
    x = x + sigma * (0.6 * fine + 0.8 * low)
    # slight softness (denoiser, lens) and bloom around everything that saturates
    s = w / 512.0
    x = cv2.GaussianBlur(x, (0, 0), 0.5 * s + 0.3)
    src = np.maximum(x - 1.0, 0.0) + _bloom_sources(S, cam, lights, gain * float(wb.mean()))
    small = cv2.resize(src, (max(w // 4, 8), max(h // 4, 4)), interpolation=cv2.INTER_AREA) * 16.0
    b1 = cv2.GaussianBlur(small, (0, 0), 1.2 * s + 0.5)
    b2 = cv2.GaussianBlur(small, (0, 0), 5.0 * s + 1.0)
    bloom = cv2.resize(0.35 * b1 + 0.25 * b2, (w, h), interpolation=cv2.INTER_LINEAR) / 16.0
    x = x + bloom * 6.0
    img = _to_uint8(x)
    return img, invalid


def expose_day(lin: np.ndarray, look: dict, rng: np.random.Generator, width: int) -> np.ndarray:
    """Auto-exposure on the log-mean luminance, mild sensor noise, sRGB tone curve."""
    lum = _luma(lin)
    gain = look["day_key"] / float(np.exp(np.mean(np.log(lum + 1e-3))))
    x = lin * gain
    x = x + 0.004 * rng.standard_normal(x.shape, dtype=np.float32) * np.sqrt(np.clip(x, 0, None) + 0.01)
    x = cv2.GaussianBlur(x, (0, 0), 0.35 * width / 512.0 + 0.2)
    return _to_uint8(x)


def render(scene: Scene, dyn: int, night: bool, rng: np.random.Generator, camera: Camera | None = None,
           hood: bool = False) -> Frame:
    """Render `scene` with its dynamic set `dyn` by day or by night (optionally from another camera)."""
    cam = camera or scene.camera
    flat = merge(scene.static, scene.dynamics[dyn])
    S = surface(flat, cam, rng, night)
    label_ids = flat.label[S.pm]
    if night:
        lin = shade_night(S, cam, scene.look, flat.lights)
        img, invalid = expose_night(lin, S, cam, scene.look, flat.lights, rng)
    else:
        lin = shade_day(S, cam, scene.look, scene.street, rng)
        img = expose_day(lin, scene.look, rng, cam.width)
        invalid = None
    if hood:
        img, label_ids = _draw_hood(img, label_ids, rng)
        if invalid is not None:
            invalid &= label_ids != L["ego vehicle"]
    train_ids = LABEL_ID_TO_TRAIN_ID[label_ids]
    return Frame(image=img, label_ids=label_ids, train_ids=train_ids, invalid=invalid, camera=cam)


def _draw_hood(img: np.ndarray, label_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ego vehicle's bonnet at the bottom of Cityscapes frames (labelId 1, ignored in evaluation)."""
    h, w = label_ids.shape
    top = h * rng.uniform(0.88, 0.93)
    xs = np.linspace(-0.05, 1.05, 24)
    ys = top + (h - top) * 0.9 * (2 * xs - 1) ** 4
    pts = np.concatenate([np.stack([xs * w, ys], 1), [[w * 1.05, h + 2], [-0.05 * w, h + 2]]])
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, shift=4)
    m = mask.astype(bool)
    label_ids = label_ids.copy()
    label_ids[m] = L["ego vehicle"]
    img = img.copy()
    shade = np.linspace(0.25, 0.1, h, dtype=np.float32)[:, None, None]
    reflect = img[::-1].astype(np.float32) * 0.25 + 40.0 * shade
    img[m] = np.clip(reflect[m], 0, 255).astype(np.uint8)
    return img, label_ids


__all__ = ["INVALID_V", "Frame", "merge", "rasterize", "render", "surface"]

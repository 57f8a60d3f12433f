"""The static street layout of a synthetic scene (road, sidewalks, buildings, furniture, vegetation) and its
look (sun and sky by day; lamps, ambient light and camera by night).

Length: one cohesive module, `StreetBuilder`: its methods draw the street's parts one after the other from
one random generator into one primitive set, each part placed against the street plan the earlier ones
left (intersections, kerbs, building fronts), so their order and their shared state are the algorithm.
"""

from __future__ import annotations

import math

import numpy as np

from nightseg.synthetic.primitives import (
    AX_SKY,
    AX_X,
    AX_Y,
    AX_Z,
    FACADE_COLORS,
    FENCE_COLORS,
    LAMP_COLORS,
    LAYER_BACK,
    LAYER_FACADE,
    LAYER_FAR,
    LAYER_GROUND,
    LAYER_LINE,
    LAYER_MARK,
    LAYER_SKY,
    LAYER_STAND,
    PAT_FACADE,
    PAT_FENCE,
    PAT_LEAVES,
    PAT_NONE,
    PAT_PAVERS,
    POLE_COLORS,
    SIDEWALK_COLORS,
    TERRAIN_COLORS,
    VEG_COLORS,
    WALL_COLORS,
    Camera,
    L,
    Light,
    PrimSet,
    ellipse_z,
    in_intersection,
    jitter_color,
    pick,
    poly_z,
    quad_x,
    quad_y,
    quad_z,
    segment_z,
    srgb,
)


class StreetBuilder:
    """Samples one street's static layout (road, sidewalks, buildings, furniture, vegetation) into `static`."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, domain: str,
                 lamp_color: tuple[float, float, float]):
        self.rng = rng
        self.lamp_color = lamp_color
        self.height, self.width, self.domain = height, width, domain
        self.static = PrimSet()

    # ----- street cross-section and camera
    def sample_street(self) -> dict:
        rng = self.rng
        lane_w = rng.uniform(2.9, 3.5)
        n_r = int(pick(rng, [1, 1, 2, 2, 2, 3]))
        n_l = int(pick(rng, [0, 1, 1, 1, 2, 2]))
        park_r = rng.random() < 0.6
        park_l = rng.random() < 0.55
        x_r = n_r * lane_w + park_r * 2.2
        x_l = -(n_l * lane_w + park_l * 2.2) - (0.0 if n_l else 0.5)
        sides = {}
        for s, xe in ((-1, x_l), (1, x_r)):
            strip = rng.uniform(1.0, 2.5) if rng.random() < 0.3 else 0.0
            walk = rng.uniform(2.5, 6.5)
            garden = rng.uniform(2.0, 6.0) if rng.random() < 0.3 else 0.0
            sides[s] = {
                "x_curb": xe,
                "strip": strip,
                "walk": walk,
                "x_walk0": xe + s * strip,
                "x_line": xe + s * (strip + walk),
                "garden": garden,
                "x_bld": xe + s * (strip + walk + garden),
                "curb_h": rng.uniform(0.1, 0.16),
                "park": park_r if s > 0 else park_l,
                "walk_color": jitter_color(rng, pick(rng, SIDEWALK_COLORS), 0.12),
                "trees": rng.random() < (0.85 if strip else 0.6),
            }
        z_end = float(rng.uniform(70, 260))
        inters = []
        z = rng.uniform(12, 45)
        while z < min(z_end - 20, 150) and len(inters) < 2:
            if rng.random() < 0.55:
                w = rng.uniform(9, 18)
                inters.append((float(z), float(z + w), [s for s in (-1, 1) if rng.random() < 0.85] or [1]))
                z += w + rng.uniform(30, 70)
            else:
                z += rng.uniform(20, 50)
        return {
            "lane_w": lane_w, "n_r": n_r, "n_l": n_l, "x_l": x_l, "x_r": x_r, "sides": sides,
            "z_end": z_end, "inters": inters, "road_color": srgb(*([rng.uniform(70, 115)] * 3)),
            "tram": rng.random() < 0.1,
        }

    def sample_camera(self, st: dict) -> Camera:
        rng = self.rng
        w, h = self.width, self.height
        lane = int(rng.integers(st["n_r"]))
        x = (lane + 0.5) * st["lane_w"] + rng.uniform(-0.3, 0.3)
        return Camera(
            f=w * rng.uniform(0.85, 1.15),
            cx=w * rng.uniform(0.46, 0.54),
            cy=h * rng.uniform(0.38, 0.47),
            x=float(x),
            y=float(rng.uniform(1.25, 1.7)),
            z=0.0,
            height=h,
            width=w,
        )

    # ----- static layout
    def build_static(self) -> tuple[dict, Camera]:
        st = self.sample_street()
        cam = self.sample_camera(st)
        self.st, self.cam = st, cam
        self._sky()
        self._ground(st)
        for s in (-1, 1):
            self._side(st, s)
        self._far_end(st)
        self._street_furniture(st)
        return st, cam

    def _sky(self) -> None:
        self.static.add(quad_z(-1e4, 1e4, -1e4, 1e4, 1e5), L["sky"], (0, 0, 0), AX_SKY, 1e5, LAYER_SKY, 1e9)

    def _ground(self, st: dict) -> None:
        rng, P = self.rng, self.static
        z_end = st["z_end"] + 5
        road_tex = rng.uniform(0.03, 0.08)
        # road surface (extends under intersections on both sides)
        P.add(quad_y(st["x_l"] - 0.01, st["x_r"] + 0.01, -2, z_end), L["road"], st["road_color"], AX_Y, 0.0,
              LAYER_GROUND, 1e6, tex=road_tex, tex_scale=1)
        white = srgb(215, 215, 210)
        # lane markings: dashed lane lines, centre line, edge lines
        lines = []
        for k in range(1, st["n_r"]):
            lines.append((k * st["lane_w"], True))
        for k in range(1, st["n_l"]):
            lines.append((-k * st["lane_w"], True))
        if st["n_l"]:
            lines.append((0.0, rng.random() < 0.5))
        period, dash = rng.uniform(9, 14), rng.uniform(3, 6)
        for x, dashed in lines:
            z = rng.uniform(0, period)
            segs = []
            while z < z_end:
                if not any(a < z + dash and z < b for a, b, _ in st["inters"]):
                    segs.append((z, z + (dash if dashed else period)))
                z += period
            for a, b in segs:
                P.add(quad_y(x - 0.07, x + 0.07, a, b, 0.002), L["road"], white, AX_Y, 0.002, LAYER_MARK, 1e5,
                      tex=0.05)
        if rng.random() < 0.5:
            for s in (-1, 1):
                if st["sides"][s]["park"]:
                    x = st["x_r"] - 2.2 if s > 0 else st["x_l"] + 2.2
                    P.add(quad_y(x - 0.06, x + 0.06, 0, z_end, 0.002), L["road"], white, AX_Y, 0.002, LAYER_MARK,
                          1e5, tex=0.05)
        # intersections: cross road, crosswalks, far sidewalk corners
        for a, b, sides in st["inters"]:
            cw = rng.random() < 0.8
            if cw:
                zc0 = a - 4.5
                x = st["x_l"] + 0.3
                while x < st["x_r"] - 0.5:
                    P.add(quad_y(x, x + 0.5, zc0, zc0 + 3.5, 0.002), L["road"], white, AX_Y, 0.002, LAYER_MARK,
                          1e5, tex=0.05)
                    x += 1.0
            # stop line
            P.add(quad_y(0.1, st["x_r"] - 0.1, a - 5.2, a - 4.9, 0.002), L["road"], white, AX_Y, 0.002,
                  LAYER_MARK, 1e5, tex=0.05)
            for s in sides:
                x0 = st["sides"][s]["x_curb"]
                xs = sorted((x0, x0 + s * 120))
                P.add(quad_y(xs[0], xs[1], a + 2.5, b - 2.5), L["road"], st["road_color"], AX_Y, 0.0,
                      LAYER_GROUND, 1e6, tex=road_tex, tex_scale=1)
        if st["tram"]:
            # tram rails embedded in the road are labelled road (as in Cityscapes)
            for x in (-0.75, 0.75):
                xc = (st["x_l"] + 2.0) if st["n_l"] else st["x_r"] - 2.0
                P.add(quad_y(xc + x - 0.05, xc + x + 0.05, 0, z_end, 0.003), L["road"], srgb(140, 140, 145),
                      AX_Y, 0.003, LAYER_MARK, 1e5, tex=0.05)

    def _side(self, st: dict, s: int) -> None:
        rng, P = self.rng, self.static
        sd = st["sides"][s]
        h_curb = sd["curb_h"]
        z_end = st["z_end"]
        # sidewalk & curb & strip, interrupted by intersections
        spans = []
        z = -2.0
        for a, b, sides in st["inters"]:
            if s in sides:
                spans.append((z, a))
                z = b
        spans.append((z, z_end + 5))
        xc, xw0, xl, xb = sd["x_curb"], sd["x_walk0"], sd["x_line"], sd["x_bld"]
        walk_tex = rng.uniform(0.06, 0.14)
        paver = (rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.85))
        for z0, z1 in spans:
            if z1 - z0 < 0.5:
                continue
            P.add(quad_x(xc, z0, z1, 0.0, h_curb), L["sidewalk"], jitter_color(rng, sd["walk_color"], 0.05), AX_X, xc,
                  LAYER_GROUND, 1e6 - 1, tex=0.05)
            xs = sorted((xc, xb + s * 0.01 if not sd["garden"] else xl))
            P.add(quad_y(xs[0], xs[1], z0, z1, h_curb), L["sidewalk"], sd["walk_color"], AX_Y, h_curb,
                  LAYER_GROUND, 1e6 - 2, pattern=PAT_PAVERS, params=paver, tex=walk_tex, tex_scale=0)
            if sd["strip"]:
                xs = sorted((xc + s * 0.25, xw0))
                P.add(quad_y(xs[0], xs[1], z0 + 0.5, z1 - 0.5, h_curb + 0.01), L["terrain"],
                      jitter_color(rng, pick(rng, TERRAIN_COLORS)), AX_Y, h_curb + 0.01, LAYER_MARK, 1e5 - 1,
                      tex=0.3, tex_scale=1)
            if sd["garden"]:
                xs = sorted((xl, xb + s * 0.01))
                P.add(quad_y(xs[0], xs[1], z0, z1, h_curb + 0.01), L["terrain"],
                      jitter_color(rng, pick(rng, TERRAIN_COLORS)), AX_Y, h_curb + 0.01, LAYER_MARK, 1e5 - 1,
                      tex=0.3, tex_scale=1)
        # cross-street sidewalks and corner buildings
        for a, b, sides in st["inters"]:
            if s not in sides:
                continue
            for za, zb in ((a, a + 2.5), (b - 2.5, b)):
                xs = sorted((xc, xc + s * 120))
                P.add(quad_y(xs[0], xs[1], za, zb, h_curb), L["sidewalk"], sd["walk_color"], AX_Y, h_curb,
                      LAYER_GROUND, 1e6 - 2, pattern=PAT_PAVERS, params=paver, tex=walk_tex, tex_scale=0)
            P.add(quad_z(min(xc, xc + s * 120), max(xc, xc + s * 120), 0, h_curb, b - 2.5), L["sidewalk"],
                  sd["walk_color"], AX_Z, b - 2.5, LAYER_GROUND, 1e6 - 1, tex=0.05)
            # the far corner building's face toward us, and buildings down the cross street
            xs = sorted((xb, xb + s * 120))
            hgt = rng.uniform(9, 26)
            self._facade_z(xs[0], xs[1], b, hgt, LAYER_FACADE, b)
            xfar = xb + s * rng.uniform(25, 60)
            self._facade_x(xfar, a + 2, b, rng.uniform(8, 25), LAYER_BACK, b + 100)
            if s in sides:
                # the near corner building's side wall is hidden; a pole with traffic light at the corner
                self._traffic_light(xc + s * 0.6, a - 1.0, facing=True)
                if rng.random() < 0.5:
                    self._traffic_light(xc + s * 0.6, b + 0.5, facing=False)
        # blocks along the street
        z = -6.0 - rng.uniform(0, 10)
        hb_profile = np.zeros(400, dtype=np.float32)
        while z < z_end:
            length = rng.uniform(8, 32)
            z0, z1 = z, min(z + length, z_end)
            z = z1
            if in_intersection(st, z0, z1, s):
                # clip the block at the intersection
                for a, b, sides in st["inters"]:
                    if s in sides and a - 1 < z1 and z0 < b + 1:
                        if z0 < a:
                            z1 = a
                        else:
                            z0 = max(z0, b)
                            z = max(z, b)
                if z1 - z0 < 2:
                    continue
            kind = rng.choice(["building", "park", "wall", "lot"], p=[0.72, 0.11, 0.09, 0.08])
            if kind == "building":
                recess = rng.uniform(0, 1.2) if rng.random() < 0.3 else 0.0
                x = xb + s * recess
                hgt = float(rng.uniform(7, 30) if rng.random() < 0.8 else rng.uniform(4, 8))
                self._facade_x(x, z0, z1, hgt, LAYER_FACADE, z0)
                if recess:
                    # side walls to the neighbours
                    xs = sorted((xb, x))
                    self._plain_z(xs[0], xs[1], 0, hgt, z1, L["building"], LAYER_FACADE, z0)
                hb_profile[max(int(z0), 0): max(int(z1), 0)] = hgt
                if sd["garden"]:
                    self._garden_line(st, s, z0, z1)
                if rng.random() < 0.25:
                    # taller building set back, seen above
                    self._facade_x(x + s * rng.uniform(8, 20), z0, z1, hgt + rng.uniform(4, 20), LAYER_BACK, z0 + 50)
            elif kind == "park":
                xs = sorted((xl, xl + s * 60))
                P.add(quad_y(xs[0], xs[1], z0, z1, h_curb + 0.005), L["terrain"], jitter_color(rng, pick(rng, TERRAIN_COLORS)),
                      AX_Y, h_curb + 0.005, LAYER_MARK, 1e5 - 2, tex=0.35, tex_scale=1)
                if rng.random() < 0.6:
                    self._fence_x(xl, z0, z1, rng.uniform(0.8, 1.8), LAYER_LINE, z0)
                for _ in range(int(rng.integers(2, 6))):
                    tz = rng.uniform(z0, z1)
                    self._tree(xl + s * rng.uniform(2, 20), tz, LAYER_BACK, big=True)
                self._facade_x(xl + s * rng.uniform(35, 60), z0 - 5, z1 + 5, rng.uniform(10, 25), LAYER_FAR, z0 + 150)
                hb_profile[max(int(z0), 0): max(int(z1), 0)] = 0
            elif kind == "wall":
                hw = rng.uniform(1.0, 3.0)
                self._plain_x(xl, z0, z1, 0, hw, L["wall"], jitter_color(rng, pick(rng, WALL_COLORS)), LAYER_LINE, z0,
                              tex=0.15)
                for _ in range(int(rng.integers(0, 3))):
                    self._tree(xl + s * rng.uniform(2, 8), rng.uniform(z0, z1), LAYER_BACK, big=True)
                self._facade_x(xl + s * rng.uniform(10, 30), z0, z1, rng.uniform(8, 22), LAYER_BACK, z0 + 60)
                hb_profile[max(int(z0), 0): max(int(z1), 0)] = hw
            else:  # fenced lot with terrain and a far building
                xs = sorted((xl, xl + s * 40))
                P.add(quad_y(xs[0], xs[1], z0, z1, h_curb + 0.005), L["terrain"],
                      jitter_color(rng, pick(rng, TERRAIN_COLORS)), AX_Y, h_curb + 0.005, LAYER_MARK, 1e5 - 2,
                      tex=0.35)
                self._fence_x(xl, z0, z1, rng.uniform(1.2, 2.2), LAYER_LINE, z0)
                self._facade_x(xl + s * rng.uniform(12, 35), z0, z1, rng.uniform(6, 20), LAYER_BACK, z0 + 60)
                hb_profile[max(int(z0), 0): max(int(z1), 0)] = 0
        sd["hb"] = hb_profile
        # trees along the kerb
        if sd["trees"]:
            xt = xc + s * (sd["strip"] / 2 if sd["strip"] else 0.9)
            zt = rng.uniform(2, 10)
            step = rng.uniform(7, 14)
            while zt < min(z_end, 160):
                if not in_intersection(st, zt - 3, zt + 3, s):
                    self._tree(xt, zt, LAYER_STAND, big=False)
                    if not sd["strip"] and rng.random() < 0.4:
                        xs = sorted((xt - 0.7, xt + 0.7))
                        P.add(quad_y(xs[0], xs[1], zt - 0.7, zt + 0.7, h_curb + 0.01), L["terrain"],
                              jitter_color(rng, pick(rng, TERRAIN_COLORS)), AX_Y, h_curb + 0.01, LAYER_MARK, 1e5 - 1,
                              tex=0.3)
                zt += step * rng.uniform(0.8, 1.2)

    def _garden_line(self, st: dict, s: int, z0: float, z1: float) -> None:
        rng = self.rng
        xl = st["sides"][s]["x_line"]
        kind = rng.choice(["fence", "wall", "hedge"])
        if kind == "fence":
            self._fence_x(xl, z0, z1, rng.uniform(0.8, 1.6), LAYER_LINE, z0)
        elif kind == "wall":
            self._plain_x(xl, z0, z1, 0, rng.uniform(0.5, 1.4), L["wall"], jitter_color(rng, pick(rng, WALL_COLORS)),
                          LAYER_LINE, z0, tex=0.15)
        else:
            hh = rng.uniform(0.8, 1.8)
            col = jitter_color(rng, pick(rng, VEG_COLORS))
            self._plain_x(xl, z0, z1, 0, hh, L["vegetation"], col, LAYER_LINE, z0, tex=0.45, pattern=PAT_LEAVES)
            self.static.add(quad_y(min(xl, xl + s * 0.8), max(xl, xl + s * 0.8), z0, z1, hh), L["vegetation"], col,
                            AX_Y, hh, LAYER_LINE, z0, tex=0.45, pattern=PAT_LEAVES)
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 3))):
                self._tree(xl + s * rng.uniform(1.0, st["sides"][s]["garden"]), rng.uniform(z0, z1), LAYER_BACK,
                           big=False)

    def _plain_x(self, x, z0, z1, y0, y1, label, color, layer, depth, tex=0.1, pattern=PAT_NONE, params=()):
        self.static.add(quad_x(x, z0, z1, y0, y1), label, color, AX_X, x, layer, depth, tex=tex,
                        pattern=pattern, params=params)

    def _plain_z(self, x0, x1, y0, y1, z, label, layer, depth, color=None):
        color = color or jitter_color(self.rng, pick(self.rng, FACADE_COLORS))
        self.static.add(quad_z(x0, x1, y0, y1, z), label, color, AX_Z, z, layer, depth, tex=0.12)

    def _facade_params(self, hgt: float, origin: float) -> tuple:
        rng = self.rng
        floor_h = rng.uniform(2.8, 3.6)
        spacing = rng.uniform(2.2, 4.2)
        shop = 1.0 if rng.random() < 0.45 else 0.0
        return (
            origin + rng.uniform(0, spacing),  # window grid origin along the facade
            spacing,
            floor_h,
            rng.uniform(0.35, 0.6),  # window width / spacing
            rng.uniform(0.4, 0.65),  # window height / floor
            shop,
            hgt,
            float(rng.integers(1, 1 << 20)),  # seed for lit windows and glass tints
        )

    def _facade_x(self, x: float, z0: float, z1: float, hgt: float, layer: int, depth: float) -> None:
        rng = self.rng
        color = jitter_color(rng, pick(rng, FACADE_COLORS))
        self.static.add(quad_x(x, z0, z1, 0, hgt), L["building"], color, AX_X, x, layer, depth,
                        pattern=PAT_FACADE, params=self._facade_params(hgt, 0.0), tex=rng.uniform(0.05, 0.2),
                        tex_scale=int(rng.integers(0, 3)))
        if rng.random() < 0.5:
            # roof slope / cornice seen from below: a darker band, still building
            roof = jitter_color(rng, srgb(90, 70, 65) if rng.random() < 0.5 else srgb(80, 82, 88))
            xr = x + (rng.uniform(1.5, 4) if x > 0 else -rng.uniform(1.5, 4))
            self.static.add(np.array([[x, hgt, z0], [x, hgt, z1], [xr, hgt + rng.uniform(1.5, 4), z1],
                                      [xr, hgt + 2.5, z0]]), L["building"], roof, AX_X, x, layer, depth + 0.01,
                            tex=0.15)

    def _facade_z(self, x0: float, x1: float, z: float, hgt: float, layer: int, depth: float) -> None:
        rng = self.rng
        color = jitter_color(rng, pick(rng, FACADE_COLORS))
        self.static.add(quad_z(x0, x1, 0, hgt, z), L["building"], color, AX_Z, z, layer, depth,
                        pattern=PAT_FACADE, params=self._facade_params(hgt, x0), tex=rng.uniform(0.05, 0.2),
                        tex_scale=int(rng.integers(0, 3)))

    def _fence_x(self, x: float, z0: float, z1: float, hgt: float, layer: int, depth: float) -> None:
        rng = self.rng
        self.static.add(quad_x(x, z0, z1, 0, hgt), L["fence"], jitter_color(rng, pick(rng, FENCE_COLORS)), AX_X, x,
                        layer, depth, pattern=PAT_FENCE,
                        params=(rng.uniform(0.1, 0.25), rng.uniform(0.2, 0.5), hgt, rng.uniform(0.25, 0.6)), tex=0.05)

    def _far_end(self, st: dict) -> None:
        """What closes the street: a facade (T-junction) or a skyline of buildings and trees."""
        rng, P = self.rng, self.static
        z = st["z_end"]
        xl, xr = st["sides"][-1]["x_bld"], st["sides"][1]["x_bld"]
        if z < 140 and rng.random() < 0.6:
            x = xl - 20
            while x < xr + 20:
                w = rng.uniform(10, 25)
                self._facade_z(x, x + w, z, rng.uniform(8, 25), LAYER_FAR, z)
                x += w
            return
        x = -z * 1.2
        while x < z * 1.2:
            w = rng.uniform(0.05, 0.25) * z
            if rng.random() < 0.3:
                r = w * 0.6
                P.add(ellipse_z(x + w / 2, r * 0.8, w * 0.6, r, z, rng=rng, jitter=0.2), L["vegetation"],
                      jitter_color(rng, pick(rng, VEG_COLORS)), AX_Z, z, LAYER_FAR, z, pattern=PAT_LEAVES, tex=0.4)
            else:
                self._facade_z(x, x + w, z, rng.uniform(0.04, 0.22) * z, LAYER_FAR, z)
            x += w

    def _tree(self, x: float, z: float, layer: int, big: bool) -> None:
        rng, P = self.rng, self.static
        trunk_h = rng.uniform(2.0, 4.0) if not big else rng.uniform(2.5, 5)
        tw = rng.uniform(0.2, 0.45)
        col = jitter_color(rng, pick(rng, VEG_COLORS), 0.2)
        bark = jitter_color(rng, srgb(80, 70, 60), 0.2)
        P.add(quad_z(x - tw / 2, x + tw / 2, 0, trunk_h + 1.0, z), L["vegetation"], bark, AX_Z, z, layer, z,
              tex=0.2, order=0)
        r = rng.uniform(1.8, 3.5) * (1.4 if big else 1.0)
        cy = trunk_h + r * 0.8
        nb = int(rng.integers(3, 6))
        u = rng.uniform(-1.0, 1.0, (nb, 4)) * [0.4, 0.3, 0.15, 0.15] + [0.0, 0.0, 0.75, 0.75]
        blobs = [ellipse_z(x + a * r, cy + b * r, r * c, r * d, z - 0.01, n=14, rng=rng, jitter=0.18)
                 for a, b, c, d in u.tolist()]
        P.add(blobs, L["vegetation"], col, AX_Z, z - 0.01, layer, z - 0.01, pattern=PAT_LEAVES,
              tex=rng.uniform(0.35, 0.6), tex_scale=0, order=1)
        P.casters.append(("blob", x, z, r, cy))
        P.casters.append(("pole", x, z, tw, trunk_h))

    def _pole(self, x: float, z: float, h: float, w: float, color, layer: int = LAYER_STAND, label: int | None = None,
              P: PrimSet | None = None, order: int = 0) -> None:
        P = P or self.static
        P.add(quad_z(x - w / 2, x + w / 2, 0, h, z), L["pole"] if label is None else label, color, AX_Z, z, layer, z,
              tex=0.06, order=order)
        P.casters.append(("pole", x, z, w, h))

    def _traffic_light(self, x: float, z: float, facing: bool) -> None:
        rng, P = self.rng, self.static
        pc = jitter_color(rng, pick(rng, POLE_COLORS))
        h = rng.uniform(2.3, 3.2)
        self._pole(x, z, h + 1.0, rng.uniform(0.1, 0.16), pc)
        bw, bh = rng.uniform(0.3, 0.4), rng.uniform(0.8, 1.0)
        housing = jitter_color(rng, pick(rng, [srgb(30, 30, 30), srgb(60, 62, 55), srgb(200, 170, 40)]), 0.1)
        P.add(quad_z(x - bw / 2, x + bw / 2, h, h + bh, z - 0.05), L["traffic light"], housing, AX_Z, z - 0.05,
              LAYER_STAND, z - 0.05, tex=0.05, order=1)
        if facing:
            state = int(rng.integers(3))
            cols = [(1.0, 0.08, 0.03), (1.0, 0.55, 0.05), (0.1, 1.0, 0.45)]
            for k in range(3):
                yc = h + bh * (0.8 - 0.3 * k)
                lit = (2 - k) == state
                c = cols[k]
                e = tuple(v * (6.0 if lit else 0.0) for v in c)
                ed = tuple(v * (0.5 if lit else 0.0) for v in c)
                P.add(ellipse_z(x, yc, bw * 0.32, bw * 0.32, z - 0.07, n=10), L["traffic light"],
                      tuple(v * 0.15 + 0.02 for v in c), AX_Z, z - 0.07, LAYER_STAND, z - 0.07, tex=0.02, emit=e,
                      emit_day=ed, order=2)
                if lit:
                    P.lights.append(Light((x, yc, z - 0.1), c, 1.5, glow=3.0))
        if rng.random() < 0.4:
            self._sign(x, z - 0.03, h - 0.7, order=3)

    def _sign(self, x: float, z: float, y: float, order: int = 1) -> None:
        rng, P = self.rng, self.static
        kind = int(rng.integers(5))
        r = rng.uniform(0.3, 0.45)
        if kind == 0:  # round prohibition/mandatory
            col = pick(rng, [srgb(200, 30, 30), srgb(30, 70, 170), srgb(230, 230, 230)])
            poly = ellipse_z(x, y, r, r, z, n=14)
        elif kind == 1:  # triangle
            col = pick(rng, [srgb(230, 230, 230), srgb(220, 60, 50)])
            poly = poly_z([(x - r, y - r * 0.8), (x + r, y - r * 0.8), (x, y + r)], z)
        elif kind == 2:  # rectangle information sign
            col = pick(rng, [srgb(30, 70, 170), srgb(30, 120, 60), srgb(230, 230, 230), srgb(240, 200, 40)])
            w = rng.uniform(0.5, 1.3)
            poly = quad_z(x - w / 2, x + w / 2, y - r, y + r, z)
        elif kind == 3:  # diamond (priority road)
            col = srgb(240, 200, 40)
            poly = poly_z([(x - r, y), (x, y + r), (x + r, y), (x, y - r)], z)
        else:  # back side of a sign: grey
            col = srgb(130, 130, 135)
            poly = ellipse_z(x, y, r, r, z, n=14) if rng.random() < 0.5 else quad_z(x - r, x + r, y - r, y + r, z)
        P.add(poly, L["traffic sign"], jitter_color(rng, col, 0.1), AX_Z, z, LAYER_STAND, z, tex=0.05, order=order,
              params=(1.0 if kind != 4 else 0.0,))

    def _street_furniture(self, st: dict) -> None:
        rng, P = self.rng, self.static
        look_lamp = self.lamp_color
        for s in (-1, 1):
            sd = st["sides"][s]
            if s == -1 and rng.random() < 0.2:
                continue
            xc = sd["x_curb"] + s * 0.5
            zl = rng.uniform(0, 15)
            spacing = rng.uniform(15, 28)
            hl = rng.uniform(6, 9.5)
            arm = rng.uniform(0.8, 2.5)
            pc = jitter_color(rng, pick(rng, POLE_COLORS))
            while zl < min(st["z_end"], 170):
                if not in_intersection(st, zl - 2, zl + 2, s):
                    self._pole(xc, zl, hl, rng.uniform(0.14, 0.24), pc)
                    xa = xc - s * arm
                    P.add(segment_z(xc, hl - 0.1, xa, hl + 0.15, 0.12, zl - 0.01), L["pole"], pc, AX_Z, zl - 0.01,
                          LAYER_STAND, zl - 0.01, order=1)
                    P.add(quad_z(min(xa, xa - s * 0.6), max(xa, xa - s * 0.6), hl - 0.05, hl + 0.2, zl - 0.02),
                          L["pole"], jitter_color(rng, srgb(120, 120, 120)), AX_Z, zl - 0.02, LAYER_STAND, zl - 0.02,
                          emit=tuple(8.0 * c for c in look_lamp), order=2)
                    P.lights.append(Light((xa - s * 0.3, hl - 0.1, zl), look_lamp, 40.0 * rng.uniform(0.6, 1.4),
                                          direction=(0.0, -1.0, 0.0), exponent=1.5, glow=6.0))
                    if rng.random() < 0.25:
                        self._sign(xc, zl - 0.05, rng.uniform(2.2, 3.0), order=3)
                zl += spacing * rng.uniform(0.9, 1.1)
            # sign posts, poles, bollards
            for _ in range(int(rng.integers(1, 6))):
                z = rng.uniform(3, 70)
                if in_intersection(st, z - 1, z + 1, s):
                    continue
                x = sd["x_curb"] + s * rng.uniform(0.3, 0.8)
                pc = jitter_color(rng, pick(rng, POLE_COLORS))
                if rng.random() < 0.65:
                    hs = rng.uniform(2.2, 3.2)
                    self._pole(x, z, hs + 0.3, rng.uniform(0.06, 0.1), pc)
                    self._sign(x, z - 0.03, hs, order=1)
                    if rng.random() < 0.35:
                        self._sign(x, z - 0.03, hs - 0.75, order=2)
                else:
                    self._pole(x, z, rng.uniform(0.8, 4.0), rng.uniform(0.1, 0.25), pc)
            # void "static" objects: bins, benches, boxes (ignored in evaluation, as in Cityscapes)
            for _ in range(int(rng.integers(0, 3))):
                z = rng.uniform(3, 50)
                x = sd["x_line"] - s * rng.uniform(0.3, 0.8)
                w, h = rng.uniform(0.5, 1.5), rng.uniform(0.6, 1.3)
                P.add(quad_z(x - w / 2, x + w / 2, 0, h, z), L["static"], jitter_color(rng, pick(rng, FENCE_COLORS)),
                      AX_Z, z, LAYER_STAND, z, tex=0.1)
        # overhead traffic light at intersections
        for a, _b, _sides in st["inters"]:
            if rng.random() < 0.4:
                xp = st["x_r"] + 0.6
                hp = rng.uniform(5.5, 6.5)
                pc = jitter_color(rng, pick(rng, POLE_COLORS))
                self._pole(xp, a - 1, hp, 0.2, pc)
                P.add(quad_z(st["lane_w"] * 0.5, xp, hp - 0.15, hp, a - 1.02), L["pole"], pc, AX_Z, a - 1.02,
                      LAYER_STAND, a - 1.02, order=1)
                xt = st["lane_w"] * rng.uniform(0.5, 1.5)
                P.add(quad_z(xt - 0.2, xt + 0.2, hp - 1.05, hp - 0.15, a - 1.05), L["traffic light"], srgb(30, 30, 30),
                      AX_Z, a - 1.05, LAYER_STAND, a - 1.05, order=2)
                c = (1.0, 0.08, 0.03) if rng.random() < 0.5 else (0.1, 1.0, 0.45)
                yc = hp - 0.35 if c[0] > 0.5 else hp - 0.85
                P.add(ellipse_z(xt, yc, 0.12, 0.12, a - 1.07, n=10), L["traffic light"], tuple(v * 0.2 for v in c),
                      AX_Z, a - 1.07, LAYER_STAND, a - 1.07, emit=tuple(6.0 * v for v in c),
                      emit_day=tuple(0.5 * v for v in c), order=3)
                P.lights.append(Light((xt, yc, a - 1.1), c, 1.5, glow=3.0))


# --- look (lighting/exposure parameters) ---------------------------------------------------------------


def sample_look(rng: np.random.Generator) -> dict:
    """Sample the lighting of a scene: sun and sky by day; lamp colours, ambient and camera by night."""
    sunny = rng.random() < 0.5
    az = rng.uniform(-1.0, 1.0)  # sun azimuth from the street axis (rad), sign = side
    el = rng.uniform(0.35, 0.9)
    sun = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el) * rng.choice([-1, 1])])
    lamp = str(rng.choice(["sodium", "led", "warm_led", "mercury"], p=[0.4, 0.3, 0.2, 0.1]))
    return {
        "sunny": bool(sunny),
        "sun": sun.tolist(),
        "sun_power": float(rng.uniform(3.0, 4.5)) if sunny else 0.0,
        "sky_power": float(rng.uniform(0.8, 1.2) if sunny else rng.uniform(1.6, 2.4)),
        "sky_top": srgb(*rng.uniform([80, 120, 180], [140, 170, 230])) if sunny else srgb(*([rng.uniform(170, 215)] * 3)),
        "day_key": float(rng.uniform(0.055, 0.085)),
        "day_tint": rng.uniform(0.94, 1.06, 3).tolist(),
        "lamp": lamp,
        "lamp_color": LAMP_COLORS[lamp],
        "ambient": float(rng.uniform(0.012, 0.03)),
        "ambient_color": pick(rng, [(0.6, 0.7, 1.0), (1.0, 0.75, 0.5), (0.8, 0.8, 0.85)]),
        "skyglow": pick(rng, [(0.06, 0.05, 0.06), (0.08, 0.05, 0.03), (0.03, 0.035, 0.06)]),
        "skyglow_power": float(rng.uniform(0.5, 1.5)),
        "night_key": float(rng.uniform(0.02, 0.035)),
        "max_gain": float(rng.uniform(4.0, 9.0)),
        "wb": float(rng.uniform(0.1, 0.5)),  # share of the colour cast the camera's white balance removes
        "shot": float(rng.uniform(0.003, 0.009)),
        "read": float(rng.uniform(0.003, 0.008)),
        "ego_lights": float(rng.uniform(0.6, 1.4)),
        "lit_windows": float(rng.uniform(0.1, 0.4)),  # share of lit windows
    }



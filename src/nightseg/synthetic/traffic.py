"""Traffic and people for the synthetic street scenes: all 8 dynamic classes.

Parked and moving cars, vans, trucks and buses (rear views in the camera's lanes, front views with
headlights in oncoming lanes), trams (class train), vehicles and cyclists crossing at intersections
(side views), pedestrians, cyclists and motorcyclists (riders on bicycles / motorcycles) and parked
two-wheelers. Sampled independently for each frame of a day/night pair, on the street of
`nightseg.synthetic.scene`.
"""

from __future__ import annotations

import numpy as np

from nightseg.synthetic.primitives import (
    AX_X,
    AX_Y,
    AX_Z,
    CAR_COLORS,
    CLOTHES,
    FENCE_COLORS,
    GLASS,
    LAYER_STAND,
    PAT_GLASS,
    SKIN,
    TYRE,
    Camera,
    L,
    Light,
    PrimSet,
    ellipse_x,
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


def sample_traffic(rng: np.random.Generator, street: dict, camera: Camera) -> PrimSet:
    """Sample the vehicles and people of one frame on `street` (faces chosen for `camera`)."""
    return _Traffic(rng, street, camera).build()


class _Traffic:
    """Builds one traffic set; vehicle faces are chosen as seen from (about) `cam`."""

    def __init__(self, rng: np.random.Generator, street: dict, cam: Camera):
        self.rng, self.st, self.cam = rng, street, cam

    def build(self) -> PrimSet:
        """Sample traffic and people for the street."""
        st, rng = self.st, self.rng
        D = PrimSet()
        # parked cars
        for s in (-1, 1):
            sd = st["sides"][s]
            if not sd["park"]:
                continue
            occupancy = rng.uniform(0.25, 0.8)
            x_in = (st["x_r"] - 1.15) if s > 0 else (st["x_l"] + 1.15)
            z = rng.uniform(-2, 6)
            while z < min(st["z_end"] - 5, 110):
                L_car = rng.uniform(3.8, 5.0)
                if in_intersection(st, z - 6, z + L_car, s):
                    z += 6
                    continue
                if rng.random() < occupancy:
                    kind = rng.choice(["car", "van", "truck"], p=[0.9, 0.08, 0.02])
                    if kind == "truck":
                        L_car = self._truck(D, x_in, z, facing=s < 0, parked=True)
                    else:
                        L_car = self._car(D, x_in, z, facing=False, parked=True, van=kind == "van")
                z += L_car + rng.uniform(0.6, 2.5)
        # moving traffic
        for lane in range(st["n_r"]):
            xl = (lane + 0.5) * st["lane_w"]
            z = rng.uniform(6, 25)
            while z < 90 and rng.random() < 0.45:
                L_car = self._vehicle(D, xl + rng.uniform(-0.3, 0.3), z, facing=False)
                z += L_car + rng.uniform(5, 30)
        for lane in range(st["n_l"]):
            xl = -(lane + 0.5) * st["lane_w"]
            z = rng.uniform(3, 25)
            while z < 110 and rng.random() < 0.45:
                L_car = self._vehicle(D, xl + rng.uniform(-0.3, 0.3), z, facing=True)
                z += L_car + rng.uniform(5, 35)
        # tram (class train)
        if st["tram"] and rng.random() < 0.5:
            xc = (st["x_l"] + 2.0) if st["n_l"] else st["x_r"] - 2.0
            self._tram(D, xc, rng.uniform(8, 45), facing=xc < 0)
        # cross traffic in an intersection: side views
        for a, b, _sides in st["inters"]:
            if rng.random() < 0.45:
                kind = rng.choice(["car", "bus", "tram", "truck", "rider"], p=[0.7, 0.07, 0.06, 0.07, 0.1])
                self._cross_vehicle(D, a, b, str(kind))
        # people
        for s in (-1, 1):
            sd = st["sides"][s]
            n = int(rng.poisson(rng.uniform(1.5, 8.0)))
            x0, x1 = sorted((sd["x_curb"] + s * 0.3, sd["x_line"] - s * 0.3))
            for _ in range(n):
                z = rng.uniform(2.5, 55)
                xp = rng.uniform(x0, x1)
                self._person(D, xp, z)
                if rng.random() < 0.3:  # a group
                    self._person(D, xp + rng.uniform(-0.8, 0.8), z + rng.uniform(-0.5, 1.5))
            # parked bicycles / motorcycles
            for _ in range(int(rng.poisson(1.6))):
                z = rng.uniform(3, 45)
                self._bicycle(D, rng.uniform(x0, x1), z, side_view=True, label=L["bicycle"])
            if rng.random() < 0.2:
                self._motorcycle(D, rng.uniform(x0, x1), rng.uniform(4, 40), side_view=True, rider=False)
        # pedestrians on a crosswalk
        for a, _b, _sides in st["inters"]:
            if rng.random() < 0.3:
                for _ in range(int(rng.integers(1, 4))):
                    self._person(D, rng.uniform(st["x_l"], st["x_r"]), a - rng.uniform(2.5, 4.5))
        # riders (cyclists near the right kerb, motorcyclists in a lane)
        for _ in range(int(rng.poisson(0.3))):
            z = rng.uniform(5, 45)
            self._bicycle(D, st["x_r"] - 0.8 - (2.2 if st["sides"][1]["park"] else 0.0), z, side_view=False,
                          label=L["bicycle"], rider=True)
        if rng.random() < 0.1:
            self._motorcycle(D, st["lane_w"] * rng.uniform(0.3, 0.7), rng.uniform(8, 40), side_view=False, rider=True)
        return D

    def _vehicle(self, D: PrimSet, x: float, z: float, facing: bool) -> float:
        r = self.rng.random()
        if r < 0.025:
            return self._bus(D, x, z, facing)
        if r < 0.05:
            return self._truck(D, x, z, facing, parked=False)
        return self._car(D, x, z, facing, parked=False, van=r < 0.2)

    def _lights_for(self, D: PrimSet, x: float, w: float, y: float, z: float, facing: bool, parked: bool) -> None:
        """Head- or tail-lights of a vehicle whose near face is at depth z."""
        if facing:
            if parked:
                return
            for sx in (-1, 1):
                D.lights.append(Light((x + sx * (w / 2 - 0.3), y, z - 0.1), (1.0, 0.95, 0.85), 6.0,
                                      direction=(0.0, -0.15, -1.0), exponent=6.0, glow=5.0))
        else:
            on = 0.0 if parked else 1.0
            for sx in (-1, 1):
                D.lights.append(Light((x + sx * (w / 2 - 0.2), y, z - 0.1), (1.0, 0.05, 0.02), 0.4 * on,
                                      glow=2.5 * on))

    def _box(self, D: PrimSet, x0, x1, y0, y1, z0, z1, label, color, depth, order=0, tex=0.05, front=True,
             front_color=None, side_color=None, top_color=None) -> None:
        cx = self.cam.x
        ch = self.cam.y
        if x0 > cx:
            D.add(quad_x(x0, z0, z1, y0, y1), label, side_color or color, AX_X, x0, LAYER_STAND, depth, tex=tex, order=order)
        elif x1 < cx:
            D.add(quad_x(x1, z0, z1, y0, y1), label, side_color or color, AX_X, x1, LAYER_STAND, depth, tex=tex, order=order)
        if y1 < ch:
            D.add(quad_y(x0, x1, z0, z1, y1), label, top_color or color, AX_Y, y1, LAYER_STAND, depth, tex=tex, order=order)
        if front:
            D.add(quad_z(x0, x1, y0, y1, z0), label, front_color or color, AX_Z, z0, LAYER_STAND, depth, tex=tex,
                  order=order + 1)

    def _wheels_side(self, D: PrimSet, x: float, zs: list[float], r: float, label: int, depth: float, order: int) -> None:
        if abs(x - self.cam.x) < 0.3:
            return
        for zw in zs:
            D.add(ellipse_x(x, zw, r, r, r), label, TYRE, AX_X, x, LAYER_STAND, depth, tex=0.02, order=order)

    def _car(self, D: PrimSet, x: float, z: float, facing: bool, parked: bool, van: bool = False) -> float:
        rng = self.rng
        w = rng.uniform(1.65, 1.95)
        length = rng.uniform(3.8, 4.9) if not van else rng.uniform(4.6, 5.4)
        hb = rng.uniform(0.55, 0.75)
        ht = rng.uniform(1.4, 1.6) if not van else rng.uniform(1.9, 2.3)
        col = jitter_color(rng, pick(rng, CAR_COLORS), 0.1)
        x0, x1 = x - w / 2, x + w / 2
        lab = L["car"]
        y0 = 0.28
        self._box(D, x0, x1, y0, y0 + hb, z, z + length, lab, col, z, order=0)
        # cabin: slanted windows (trapezoids) under a roof of the body colour, pillars of the body colour
        inset = 0.1
        zc0 = z + (length * rng.uniform(0.18, 0.3) if not van else 0.3)
        zc1 = z + length * rng.uniform(0.7, 0.82) if not van else z + length - 0.2
        yb = y0 + hb
        slope = 0.18 if not van else 0.05
        xa, xb = x0 + inset, x1 - inset
        rake0, rake1 = (ht - yb) * (0.9 if not van else 0.3), (ht - yb) * (0.7 if not van else 0.1)
        xs = xa if xa > self.cam.x else (xb if xb < self.cam.x else None)
        if xs is not None:
            D.add(np.array([[xs, yb, zc0], [xs, yb, zc1], [xs, ht, zc1 - rake1], [xs, ht, zc0 + rake0]]), lab, col,
                  AX_X, xs, LAYER_STAND, z, order=2)
            D.add(np.array([[xs, yb + 0.06, zc0 + 0.12], [xs, yb + 0.06, zc1 - 0.12], [xs, ht - 0.08, zc1 - rake1 - 0.05],
                            [xs, ht - 0.08, zc0 + rake0 + 0.05]]), lab, GLASS, AX_X, xs, LAYER_STAND, z, order=3,
                  pattern=PAT_GLASS)
        if ht < self.cam.y:
            D.add(quad_y(xa + slope, xb - slope, zc0 + rake0, zc1 - rake1, ht), lab, col, AX_Y, ht, LAYER_STAND, z,
                  order=4)
        D.add(poly_z([(xa, yb), (xb, yb), (xb - slope, ht), (xa + slope, ht)], zc0 + rake0 * 0.5), lab, col, AX_Z,
              zc0 + rake0 * 0.5, LAYER_STAND, z, order=5)
        D.add(poly_z([(xa + 0.1, yb + 0.05), (xb - 0.1, yb + 0.05), (xb - slope - 0.05, ht - 0.07),
                      (xa + slope + 0.05, ht - 0.07)], zc0 + rake0 * 0.5 - 0.01), lab, GLASS, AX_Z,
              zc0 + rake0 * 0.5 - 0.01, LAYER_STAND, z, order=6, pattern=PAT_GLASS)
        # bonnet/boot top and wheels
        self._wheels_side(D, x0 if x0 > self.cam.x else x1, [z + 0.8, z + length - 0.8], 0.32, lab, z, 1)
        D.add(quad_z(x0 + 0.1, x0 + 0.35, 0.0, 0.3, z + 0.3), lab, TYRE, AX_Z, z + 0.3, LAYER_STAND, z, order=-1)
        D.add(quad_z(x1 - 0.35, x1 - 0.1, 0.0, 0.3, z + 0.3), lab, TYRE, AX_Z, z + 0.3, LAYER_STAND, z, order=-1)
        # rear/front details on the near face
        yl = y0 + hb * 0.7
        lc = (0.5, 0.02, 0.02) if not facing else (0.8, 0.8, 0.75)
        on = 0.0 if parked else 1.0
        em = tuple(v * (3.0 if facing else 1.2) * on for v in ((1, 0.95, 0.85) if facing else (1.0, 0.04, 0.02)))
        for sx in (-1, 1):
            xa = x + sx * (w / 2 - 0.25)
            D.add(quad_z(xa - 0.18, xa + 0.18, yl - 0.08, yl + 0.08, z - 0.01), lab, lc, AX_Z, z - 0.01, LAYER_STAND,
                  z, emit=em, order=3)
        D.add(quad_z(x - 0.26, x + 0.26, y0 + 0.1, y0 + 0.22, z - 0.01), lab, srgb(220, 220, 215), AX_Z, z - 0.01,
              LAYER_STAND, z, order=3)
        self._lights_for(D, x, w, yl, z, facing, parked)
        D.casters.append(("box", x0, x1, z, z + length, ht))
        return length

    def _truck(self, D: PrimSet, x: float, z: float, facing: bool, parked: bool) -> float:
        rng = self.rng
        w = rng.uniform(2.3, 2.55)
        lab = L["truck"]
        col = jitter_color(rng, pick(rng, CAR_COLORS + [srgb(230, 230, 230)] * 3), 0.1)
        cargo_l, cab_l = rng.uniform(4.5, 8.0), rng.uniform(1.8, 2.4)
        hc = rng.uniform(3.0, 3.9)
        x0, x1 = x - w / 2, x + w / 2
        if facing:  # we see the cab first
            self._box(D, x0 + 0.05, x1 - 0.05, 0.4, rng.uniform(2.6, 3.1), z, z + cab_l, lab, col, z, order=2)
            D.add(quad_z(x0 + 0.2, x1 - 0.2, 1.7, 2.5, z - 0.01), lab, GLASS, AX_Z, z - 0.01, LAYER_STAND, z, order=4)
            self._box(D, x0, x1, 0.5, hc, z + cab_l, z + cab_l + cargo_l, lab, jitter_color(rng, col), z, order=0)
        else:
            self._box(D, x0, x1, 0.5, hc, z, z + cargo_l, lab, col, z, order=2)
            self._box(D, x0 + 0.05, x1 - 0.05, 0.4, rng.uniform(2.6, 3.1), z + cargo_l, z + cargo_l + cab_l, lab,
                      jitter_color(rng, col), z, order=0, front=False)
        length = cargo_l + cab_l
        side = x0 if x0 > self.cam.x else x1
        self._wheels_side(D, side, [z + 1.0, z + length - 1.2, z + length - 2.4], 0.5, lab, z, 1)
        D.add(quad_z(x0 + 0.1, x1 - 0.1, 0.0, 0.5, z + 0.5), lab, TYRE, AX_Z, z + 0.5, LAYER_STAND, z, order=-1)
        self._lights_for(D, x, w, 0.9, z, facing, parked)
        D.casters.append(("box", x0, x1, z, z + length, hc))
        return length

    def _bus(self, D: PrimSet, x: float, z: float, facing: bool) -> float:
        rng = self.rng
        w = 2.55
        length = rng.uniform(11, 18)
        h = rng.uniform(2.9, 3.3)
        lab = L["bus"]
        lit = float(rng.uniform(0.3, 1.0))  # lit interior at night
        col = jitter_color(rng, pick(rng, [srgb(230, 230, 225), srgb(40, 80, 160), srgb(200, 40, 40), srgb(240, 200, 40),
                                         srgb(60, 140, 70), srgb(150, 150, 155)]), 0.08)
        x0, x1 = x - w / 2, x + w / 2
        self._box(D, x0, x1, 0.3, h, z, z + length, lab, col, z, order=0)
        side = x0 if x0 > self.cam.x else x1
        # window band on the side and on the near face
        if abs(side - self.cam.x) > 0.3:
            D.add(quad_x(side, z + 1.0, z + length - 0.5, 1.3, h - 0.35), lab, GLASS, AX_X, side, LAYER_STAND, z,
                  order=1, pattern=PAT_GLASS, params=(lit,))
        D.add(quad_z(x0 + 0.15, x1 - 0.15, 1.3 if facing else 1.6, h - 0.25, z - 0.01), lab, GLASS, AX_Z, z - 0.01,
              LAYER_STAND, z, order=3, pattern=PAT_GLASS, params=(lit,))
        self._wheels_side(D, side, [z + 2.5, z + length - 3.0], 0.5, lab, z, 2)
        self._lights_for(D, x, w, 0.8, z, facing, False)
        for sx in (-1, 1):
            D.add(quad_z(x + sx * 1.0 - 0.15, x + sx * 1.0 + 0.15, 0.7, 0.95, z - 0.02), lab,
                  (0.8, 0.8, 0.75) if facing else (0.5, 0.02, 0.02), AX_Z, z - 0.02, LAYER_STAND, z, order=4,
                  emit=(4.0, 3.8, 3.4) if facing else (1.2, 0.05, 0.02))
        D.casters.append(("box", x0, x1, z, z + length, h))
        return length

    def _tram(self, D: PrimSet, x: float, z: float, facing: bool) -> float:
        rng = self.rng
        w, h = 2.65, rng.uniform(3.3, 3.6)
        length = rng.uniform(20, 35)
        lab = L["train"]
        col = jitter_color(rng, pick(rng, [srgb(230, 230, 230), srgb(190, 40, 40), srgb(40, 90, 170), srgb(240, 210, 60),
                                         srgb(80, 150, 90)]), 0.08)
        x0, x1 = x - w / 2, x + w / 2
        self._box(D, x0, x1, 0.35, h, z, z + length, lab, col, z, order=0)
        side = x0 if x0 > self.cam.x else x1
        if abs(side - self.cam.x) > 0.3:
            D.add(quad_x(side, z + 0.8, z + length - 0.8, 1.1, h - 0.5), lab, GLASS, AX_X, side, LAYER_STAND, z,
                  order=1, pattern=PAT_GLASS, params=(1.0,))
        D.add(quad_z(x0 + 0.2, x1 - 0.2, 1.2, h - 0.3, z - 0.01), lab, GLASS, AX_Z, z - 0.01, LAYER_STAND, z, order=3)
        D.add(segment_z(x - 0.5, h, x + 0.2, h + 0.9, 0.06, z + 3), lab, srgb(40, 40, 40), AX_Z, z + 3, LAYER_STAND, z,
              order=4)
        self._lights_for(D, x, w, 0.9, z, facing, False)
        D.casters.append(("box", x0, x1, z, z + length, h))
        return length

    def _cross_vehicle(self, D: PrimSet, a: float, b: float, kind: str) -> None:
        """A vehicle crossing the intersection: a side view in a Z plane."""
        rng = self.rng
        zc = rng.uniform(a + 3, max(a + 3.5, b - 4))
        xc = rng.uniform(-12, 12)
        if kind == "rider":
            self._bicycle(D, xc, zc, side_view=True, label=L["bicycle"], rider=True)
            return
        lab = {"car": L["car"], "bus": L["bus"], "tram": L["train"], "truck": L["truck"]}[kind]
        length = {"car": rng.uniform(3.8, 4.8), "bus": rng.uniform(11, 15), "tram": rng.uniform(20, 30),
                  "truck": rng.uniform(6, 10)}[kind]
        h = {"car": 1.5, "bus": 3.1, "tram": 3.4, "truck": 3.5}[kind]
        col = jitter_color(rng, pick(rng, CAR_COLORS), 0.1)
        x0, x1 = xc - length / 2, xc + length / 2
        if kind == "car":
            D.add(poly_z([(x0, 0.3), (x1, 0.3), (x1, 0.95), (x1 - 0.9, 1.05), (x1 - 1.6, h), (x0 + 1.0, h), (x0 + 0.3, 1.0),
                          (x0, 0.95)], zc), lab, col, AX_Z, zc, LAYER_STAND, zc, tex=0.05)
            D.add(poly_z([(x1 - 1.7, 1.05), (x1 - 1.55, h - 0.08), (x0 + 1.1, h - 0.08), (x0 + 0.5, 1.05)], zc - 0.01), lab,
                  GLASS, AX_Z, zc - 0.01, LAYER_STAND, zc, order=1)
            for xw in (x0 + 0.8, x1 - 0.8):
                D.add(ellipse_z(xw, 0.32, 0.32, 0.32, zc - 0.02), lab, TYRE, AX_Z, zc - 0.02, LAYER_STAND, zc, order=2)
        else:
            D.add(quad_z(x0, x1, 0.35, h, zc), lab, col, AX_Z, zc, LAYER_STAND, zc, tex=0.05)
            D.add(quad_z(x0 + 0.6, x1 - 0.6, 1.2, h - 0.4, zc - 0.01), lab, GLASS, AX_Z, zc - 0.01, LAYER_STAND, zc,
                  order=1, pattern=PAT_GLASS, params=(0.0 if kind == "truck" else 1.0,))
            for xw in np.linspace(x0 + 1.5, x1 - 1.5, max(2, int(length / 6))):
                D.add(ellipse_z(float(xw), 0.45, 0.45, 0.45, zc - 0.02), lab, TYRE, AX_Z, zc - 0.02, LAYER_STAND, zc,
                      order=2)
        D.lights.append(Light((x0 if rng.random() < 0.5 else x1, 0.8, zc - 0.5), (1.0, 0.95, 0.85), 3.0, glow=4.0,
                              direction=None))

    def _person(self, D: PrimSet, x: float, z: float, label: int | None = None, seated_y: float | None = None) -> None:
        """A pedestrian (or, with `seated_y`, the upper body and legs of a rider) as a billboard."""
        rng = self.rng
        lab = L["person"] if label is None else label
        hp = rng.uniform(1.55, 1.95)
        top = jitter_color(rng, pick(rng, CLOTHES), 0.1)
        legs = jitter_color(rng, pick(rng, CLOTHES), 0.1)
        skin = pick(rng, SKIN)
        hw = hp * rng.uniform(0.12, 0.15)  # half shoulder width
        if seated_y is None:
            y_hip = hp * 0.5
            stride = rng.uniform(0.0, 0.25)
            D.add([poly_z([(x + sx * 0.03, y_hip), (x + sx * hw * 0.75, y_hip), (x + sx * (stride + 0.07), 0.0),
                           (x + sx * (stride - 0.06), 0.0)], z) for sx in (-1, 1)], lab, legs, AX_Z, z, LAYER_STAND,
                  z, order=0)
            y0 = y_hip
        else:
            y0 = seated_y
            hp = seated_y + hp * 0.5
            D.add(poly_z([(x - 0.08, y0), (x + 0.08, y0), (x + 0.06, y0 - 0.75), (x - 0.06, y0 - 0.75)], z - 0.02), lab,
                  legs, AX_Z, z - 0.02, LAYER_STAND, z, order=3)
        y_sh = hp * 0.82
        coat = rng.uniform(0, 0.25) if seated_y is None else 0.0
        arms = rng.uniform(0.0, 0.12, 2)
        D.add([poly_z([(x - hw * 0.85, y0 - coat), (x + hw * 0.85, y0 - coat), (x + hw, y_sh), (x - hw, y_sh)], z)]
              + [segment_z(x + sx * hw, y_sh - 0.02, x + sx * (hw + a), y0 - 0.05, 0.09, z) for sx, a in zip((-1, 1), arms)],
              lab, top, AX_Z, z, LAYER_STAND, z, order=1)
        rh = hp * 0.065
        D.add([quad_z(x - 0.04, x + 0.04, y_sh - 0.02, y_sh + 0.06, z),
               ellipse_z(x, y_sh + 0.05 + rh, rh * 0.85, rh * 1.05, z, n=10)], lab, skin, AX_Z, z, LAYER_STAND, z, order=2)
        if rng.random() < 0.6:  # hair / hat
            D.add(ellipse_z(x, y_sh + 0.07 + rh * 1.35, rh * 0.9, rh * 0.6, z - 0.001, n=10), lab,
                  jitter_color(rng, pick(rng, CLOTHES[:4])), AX_Z, z - 0.001, LAYER_STAND, z, order=3)
        if rng.random() < 0.25:  # bag
            sx = 1 if rng.random() < 0.5 else -1
            D.add(quad_z(x + sx * hw, x + sx * (hw + 0.25), y0 - 0.1, y0 + 0.25, z - 0.01), lab,
                  jitter_color(rng, pick(rng, CLOTHES)), AX_Z, z - 0.01, LAYER_STAND, z, order=4)
        D.casters.append(("blob", x, z, 0.3, hp * 0.5))

    def _bicycle(self, D: PrimSet, x: float, z: float, side_view: bool, label: int, rider: bool = False) -> None:
        rng = self.rng
        col = jitter_color(rng, pick(rng, CAR_COLORS + FENCE_COLORS), 0.1)
        r = rng.uniform(0.32, 0.36)
        if side_view:
            wb = rng.uniform(1.0, 1.1)
            xa, xb = x - wb / 2, x + wb / 2
            for xw in (xa, xb):
                D.add(ellipse_z(xw, r, r, r, z, n=14), label, TYRE, AX_Z, z, LAYER_STAND, z, order=0)
                D.add(ellipse_z(xw, r, r * 0.82, r * 0.82, z - 0.001, n=14), label, srgb(110, 110, 110), AX_Z, z - 0.001,
                      LAYER_STAND, z, order=1, tex=0.3)
            ys = r + 0.45
            for seg in [(xa, r, x - 0.05, r), (x - 0.05, r, x - 0.15, ys), (x - 0.15, ys, xb - 0.15, ys + 0.05),
                        (xb - 0.15, ys + 0.05, xb, r), (x - 0.05, r, xb - 0.15, ys + 0.05), (xa, r, x - 0.15, ys),
                        (xb - 0.15, ys + 0.05, xb - 0.2, ys + 0.3)]:
                D.add(segment_z(*seg, 0.045, z - 0.002), label, col, AX_Z, z - 0.002, LAYER_STAND, z, order=2)
            if rider:
                self._person(D, x - 0.1, z - 0.01, label=L["rider"], seated_y=ys + 0.05)
        else:  # seen from behind: a thin wheel and a rider above it
            D.add(quad_z(x - 0.03, x + 0.03, 0.0, 2 * r, z), label, TYRE, AX_Z, z, LAYER_STAND, z, order=0)
            D.add(quad_z(x - 0.12, x + 0.12, 2 * r - 0.05, 2 * r + 0.05, z - 0.001), label, col, AX_Z, z - 0.001,
                  LAYER_STAND, z, order=1)
            D.add(quad_z(x - 0.28, x + 0.28, 2 * r + 0.35, 2 * r + 0.38, z + 0.4), label, col, AX_Z, z + 0.4, LAYER_STAND,
                  z, order=-1)
            if rider:
                self._person(D, x, z - 0.01, label=L["rider"], seated_y=2 * r + 0.3)
            D.lights.append(Light((x, 2 * r, z - 0.05), (1.0, 0.05, 0.02), 0.1, glow=1.2))
        D.casters.append(("pole", x, z, 0.6, 1.0))

    def _motorcycle(self, D: PrimSet, x: float, z: float, side_view: bool, rider: bool) -> None:
        rng = self.rng
        lab = L["motorcycle"]
        col = jitter_color(rng, pick(rng, CAR_COLORS), 0.1)
        r = rng.uniform(0.3, 0.36)
        if side_view:
            wb = rng.uniform(1.3, 1.5)
            for xw in (x - wb / 2, x + wb / 2):
                D.add(ellipse_z(xw, r, r, r, z, n=14), lab, TYRE, AX_Z, z, LAYER_STAND, z, order=0)
            D.add(poly_z([(x - wb / 2 + 0.1, r + 0.1), (x + wb / 2, r + 0.2), (x + wb / 2 - 0.1, r + 0.65),
                          (x, r + 0.55), (x - wb / 2, r + 0.55)], z - 0.01), lab, col, AX_Z, z - 0.01, LAYER_STAND, z,
                  order=1)
            if rider:
                self._person(D, x, z - 0.02, label=L["rider"], seated_y=r + 0.55)
        else:
            D.add(quad_z(x - 0.06, x + 0.06, 0, 2 * r, z), lab, TYRE, AX_Z, z, LAYER_STAND, z, order=0)
            D.add(poly_z([(x - 0.25, 2 * r - 0.1), (x + 0.25, 2 * r - 0.1), (x + 0.2, 2 * r + 0.35),
                          (x - 0.2, 2 * r + 0.35)], z - 0.01), lab, col, AX_Z, z - 0.01, LAYER_STAND, z, order=1)
            D.add(quad_z(x - 0.1, x + 0.1, 2 * r, 2 * r + 0.08, z - 0.02), lab, (0.5, 0.02, 0.02), AX_Z, z - 0.02,
                  LAYER_STAND, z, order=2, emit=(1.2, 0.04, 0.02))
            D.lights.append(Light((x, 2 * r + 0.05, z - 0.05), (1.0, 0.05, 0.02), 0.2, glow=2.0))
            if rider:
                self._person(D, x, z - 0.03, label=L["rider"], seated_y=2 * r + 0.3)
        D.casters.append(("pole", x, z, 0.5, 1.2))

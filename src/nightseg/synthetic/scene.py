"""Procedural street layouts for the synthetic day/night benchmark: geometry and labels only.

A scene is built in a right-handed world frame in metres: X to the right, Y up, Z forward along the
street, the ground at Y = 0. Everything is a planar polygon ("primitive") lying in one of three kinds of
plane (X = const for facades and vehicle sides, Y = const for the ground and roofs, Z = const for
billboards and vehicle fronts), so that the renderer can recover each pixel's 3-D position and normal
exactly from the plane of the primitive that covers it. Primitives carry a Cityscapes labelId, a
linear-RGB albedo, a procedural pattern and a night emission; lights and shadow casters are listed
beside them. Painter's order is given by (layer, distance) keys: ground first, then facades far to
near, then standing objects far to near.

A :class:`Scene` holds the static layout (road, sidewalks, buildings, poles, vegetation, ...) once and
any number of dynamic sets (vehicles, people: `nightseg.synthetic.traffic`) sampled independently,
so that a day/night pair shares its static layout but not its traffic. `sample_look` draws the lighting
of the scene (sun and sky by day; lamp type, ambient, camera gain, noise and white balance by night).
"""

from __future__ import annotations

import numpy as np

from nightseg.synthetic.primitives import Scene
from nightseg.synthetic.street import StreetBuilder, sample_look
from nightseg.synthetic.traffic import sample_traffic


def build_scene(rng: np.random.Generator, height: int, width: int, domain: str = "cityscapes",
                n_dynamic: int = 1) -> Scene:
    """Sample one street scene: layout, camera, look and `n_dynamic` independent traffic sets."""
    look = sample_look(rng)
    b = StreetBuilder(rng, height, width, domain, look["lamp_color"])
    st, cam = b.build_static()
    dyn_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(rng.integers(1 << 62))).spawn(n_dynamic)]
    dynamics = [sample_traffic(r, st, cam) for r in dyn_rngs]
    return Scene(camera=cam, static=b.static, dynamics=dynamics, look=look, street=st, domain=domain)

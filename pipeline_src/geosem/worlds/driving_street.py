"""The static street of a driving-world drive: road surface, ground bands, property boundaries,
buildings, trees, bushes, street lights and traffic signs (called in this order by
:func:`geosem.worlds.driving_layout.build_scene`; each draws from the layout's one generator)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.driving_scene import (
    BUILDING,
    FENCE,
    GARDEN_WALL,
    GRASS,
    HEDGE,
    POLE,
    SIDEWALK,
    STREET_LIGHT,
    TRAFFIC_SIGN,
    TREE,
    GroundSide,
    StreetLayout,
)

# Property boundaries behind the sidewalk / grass strip: part, height range (m), thickness (m).
_BOUNDARIES: dict[int, tuple[int, tuple[float, float], float]] = {
    1: (FENCE, (1.0, 1.8), 0.06),
    2: (GARDEN_WALL, (0.8, 2.2), 0.25),
    3: (HEDGE, (0.8, 1.6), 0.8),
}


def place_road_surface(street: StreetLayout) -> tuple[list[float], list[int]]:
    """The road's surface: a new material every 15-45 m (start of each stretch, its material)."""
    starts, mats = [], []
    s = street.s_min
    while s < street.s_max:
        starts.append(s)
        mats.append(street.bank.draw())
        s += street.rng.uniform(15.0, 45.0)
    return starts, mats


def place_ground_bands(street: StreetLayout) -> tuple[GroundSide, list[tuple[float, float, float, int]]]:
    """One side's ground in segments of 12-40 m: sidewalk, optional grass strip, verge (grass or paved),
    and the property boundary each segment may have (s0, s1, lateral offset, boundary kind)."""
    rng, bank, sw = street.rng, street.bank, street.sidewalk
    starts, strip_w, verge_part, mats, fronts = [], [], [], [], []
    boundaries: list[tuple[float, float, float, int]] = []
    s = street.s_min
    while s < street.s_max:
        length = rng.uniform(12.0, 40.0)
        strip = rng.uniform(1.5, 4.0) if rng.random() < 0.4 else 0.0
        verge = GRASS if rng.random() < 0.5 else SIDEWALK
        mats.append((bank.draw(), bank.draw(), bank.draw()))
        boundary = int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))
        thickness = _BOUNDARIES[boundary][2] if boundary else 0.0
        starts.append(s)
        strip_w.append(strip)
        verge_part.append(verge)
        fronts.append(sw + strip + thickness + 0.3)
        if boundary:
            boundaries.append((s, s + length, sw + strip + 0.15 + 0.5 * thickness, boundary))
        s += length
    mats_arr = np.array(mats, dtype=np.int64)
    side = GroundSide(
        starts=np.array(starts),
        strip_width=np.array(strip_w),
        verge_part=np.array(verge_part, dtype=np.int64),
        sidewalk_mat=mats_arr[:, 0],
        strip_mat=mats_arr[:, 1],
        verge_mat=mats_arr[:, 2],
        front=np.array(fronts),
    )
    return side, boundaries


def place_property_boundaries(
    street: StreetLayout, side: int, boundaries: list[tuple[float, float, float, int]]
) -> None:
    """Fences, garden walls and hedges in pieces of <= 8 m so that they follow a curved road."""
    for s0, s1, off, kind in boundaries:
        part, height_range, thick = _BOUNDARIES[kind]
        height = street.rng.uniform(*height_range)
        material = street.bank.draw()
        pieces = max(1, math.ceil((s1 - s0) / 8.0))
        edges = np.linspace(s0 + 0.5, s1 - 0.5, pieces + 1)
        for a, b in itertools.pairwise(edges):
            street.prims.add(
                rc.BOX,
                0.5 * (a + b),
                side * (street.half_road + off),
                street.y_raised - 0.5 * height + 0.1,
                (0.5 * thick, 0.5 * height + 0.1, 0.5 * (b - a)),
                part,
                material,
            )


def place_building_row(street: StreetLayout, side: int, row: int) -> None:
    """Buildings: row 0 is the front row with varied setback, row 1 a sparser, taller back row."""
    rng, config = street.rng, street.config
    s = street.s_min - rng.uniform(0.0, 10.0)
    while s < street.s_max:
        wide_gap = rng.random() < (config.building_gap_prob if row == 0 else 0.5)
        s += rng.uniform(8.0, 20.0) if wide_gap else rng.uniform(0.5, 4.0)
        width = rng.uniform(8.0, 24.0)
        depth = rng.uniform(8.0, 16.0) if row == 0 else rng.uniform(10.0, 20.0)
        height = rng.uniform(5.0, 24.0) if row == 0 else rng.uniform(10.0, 35.0)
        near = (
            street.front_lat(side, s, s + width) + rng.uniform(0.5, 5.0) if row == 0 else rng.uniform(24, 32)
        )
        mid = s + 0.5 * width
        s += width
        if mid - 0.5 * width > street.s_max:
            break
        street.prims.add(
            rc.BOX,
            mid,
            side * (near + 0.5 * depth),
            street.y_raised - 0.5 * height + 0.25,  # sunk into the ground: no seam at the base
            (0.5 * depth, 0.5 * height + 0.25, 0.5 * width),
            BUILDING,
            street.bank.draw(),
        )


def place_trees(street: StreetLayout, side: int) -> None:
    """Trees in the grass strip (or at the back of the sidewalk): trunk + crown, crowns above head height
    so that people pass beneath them."""
    rng, bank, g, sw = street.rng, street.bank, street.sides[side], street.sidewalk
    for s in street.positions(street.config.trees_per_100m, 4.0):
        k = int(g.segment(np.array([s]))[0])
        off = sw + 0.5 * g.strip_width[k] if g.strip_width[k] > 0 else sw - 0.7
        trunk_r = rng.uniform(0.12, 0.25)
        crown_xz, crown_y = rng.uniform(1.2, 2.6), rng.uniform(1.2, 2.8)
        trunk_h = rng.uniform(2.3, 3.5) + 0.4 * crown_y
        material = bank.draw()
        lat = side * (street.half_road + off)
        trunk_y = street.y_raised - 0.5 * trunk_h + 0.1
        street.prims.add(
            rc.CYLINDER, s, lat, trunk_y, (trunk_r, 0.5 * trunk_h + 0.1, trunk_r), TREE, material
        )
        crown_centre_y = street.y_raised - trunk_h - 0.6 * crown_y
        crown = (crown_xz, crown_y, crown_xz * rng.uniform(0.8, 1.2))  # drawn before the crown's material
        street.prims.add(rc.ELLIPSOID, s, lat, crown_centre_y, crown, TREE, bank.draw())


def place_bushes(street: StreetLayout, side: int) -> None:
    """Bushes in the grass strip, or behind the front of the plot where there is none."""
    rng, g, sw = street.rng, street.sides[side], street.sidewalk
    for s in street.positions(street.config.bushes_per_100m, 2.0):
        k = int(g.segment(np.array([s]))[0])
        off = sw + 0.5 * g.strip_width[k] if g.strip_width[k] > 0 else g.front[k] + rng.uniform(0.5, 3.0)
        ry = rng.uniform(0.4, 0.9)
        street.prims.add(
            rc.ELLIPSOID,
            s,
            side * (street.half_road + off),
            street.y_raised - 0.3 * ry,
            (rng.uniform(0.5, 1.2), ry, rng.uniform(0.5, 1.5)),
            HEDGE,
            street.bank.draw(),
        )


def place_street_lights(street: StreetLayout, side: int) -> None:
    """Street lights at the kerb: a pole with an arm reaching over the road."""
    rng, y_raised = street.rng, street.y_raised
    for s in street.positions(street.config.poles_per_100m, 8.0):
        r, h = rng.uniform(0.07, 0.14), rng.uniform(5.0, 8.0)
        arm = rng.uniform(1.0, 2.0)
        material = street.bank.draw()
        lat = side * (street.half_road + 0.35)
        street.prims.add(
            rc.CYLINDER, s, lat, y_raised - 0.5 * h + 0.1, (r, 0.5 * h + 0.1, r), STREET_LIGHT, material
        )
        arm_lat = side * (street.half_road + 0.35 - 0.5 * arm)
        street.prims.add(
            rc.BOX, s, arm_lat, y_raised - h + 0.1, (0.5 * arm, 0.06, 0.06), STREET_LIGHT, material
        )


def place_traffic_signs(street: StreetLayout, side: int) -> None:
    """Traffic signs at the kerb: a thin pole plus a plate facing the traffic."""
    rng, bank, y_raised = street.rng, street.bank, street.y_raised
    for s in street.positions(street.config.signs_per_100m, 10.0):
        r, h = rng.uniform(0.04, 0.06), rng.uniform(2.2, 3.0)
        plate = rng.uniform(0.3, 0.45)
        lat = side * (street.half_road + 0.45)
        street.prims.add(
            rc.CYLINDER, s, lat, y_raised - 0.5 * h + 0.1, (r, 0.5 * h + 0.1, r), POLE, bank.draw()
        )
        # Argument order is draw order: plate aspect, plate material, then the plate's turn.
        street.prims.add(
            rc.BOX,
            s,
            lat,
            y_raised - h - plate + 0.1,
            (plate, plate * rng.uniform(0.8, 1.2), 0.02),
            TRAFFIC_SIGN,
            bank.draw(),
            yaw_offset=rng.uniform(-0.3, 0.3),
            local=(0.0, -r - 0.03),
        )

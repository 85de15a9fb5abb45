"""Cars and people of a driving-world drive: parked cars, cars driving in the lanes, cars standing in
them and people on the sidewalks (called in this order by :func:`geosem.worlds.driving_layout.build_scene`
after the static street; each draws from the layout's one generator). Their footprints, swept over the
drive for moving ones, overlap neither each other nor the ego car's corridor."""

from __future__ import annotations

import math

from geosem.worlds import raycast as rc
from geosem.worlds.driving_scene import CAR, PERSON, SIDES, StreetLayout

_LANES = (-1.8, 0.0, 1.8)  # lateral centre of the oncoming lane, the ego lane, the same-direction lane


def _add_car(
    street: StreetLayout, s: float, lat: float, length: float, width: float, yaw_offset: float, speed: float
) -> None:
    """A car as a new object: body, cabin and four wheels."""
    rng, bank, prims = street.rng, street.bank, street.prims
    obj = len(street.objects)
    street.objects.append((s, lat, street.y_road, speed, yaw_offset))
    body_h, cabin_h, clearance = rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.6), 0.25
    body_mat, wheel_mat = bank.draw(), bank.draw()
    body = (0.5 * width, 0.5 * body_h, 0.5 * length)
    prims.add_to_object(obj, rc.BOX, (0.0, -clearance - 0.5 * body_h, 0.0), body, CAR, body_mat)
    cabin = (0.45 * width, 0.5 * cabin_h, 0.27 * length)
    cabin_at = (0.0, -clearance - body_h - 0.5 * cabin_h, -0.08 * length)
    prims.add_to_object(obj, rc.BOX, cabin_at, cabin, CAR, body_mat)
    for wx in (-1.0, 1.0):
        for wz in (-1.0, 1.0):
            wheel_at = (wx * (0.5 * width - 0.1), -0.31, wz * (0.5 * length - 0.75))
            prims.add_to_object(obj, rc.ELLIPSOID, wheel_at, (0.11, 0.31, 0.31), CAR, wheel_mat)


def _add_person(street: StreetLayout, s: float, lat: float, speed: float, yaw_offset: float) -> None:
    """A person as a new object: legs, torso and head, scaled by a drawn body size."""
    bank, prims = street.bank, street.prims
    obj = len(street.objects)
    street.objects.append((s, lat, street.y_raised, speed, yaw_offset))
    k = street.rng.uniform(0.9, 1.1)
    legs, torso, head = 0.84 * k, 0.6 * k, 0.25 * k
    prims.add_to_object(
        obj, rc.BOX, (0.0, -0.5 * legs, 0.0), (0.17 * k, 0.5 * legs, 0.11 * k), PERSON, bank.draw()
    )
    torso_at = (0.0, -legs - 0.5 * torso, 0.0)
    prims.add_to_object(obj, rc.CYLINDER, torso_at, (0.2 * k, 0.5 * torso, 0.2 * k), PERSON, bank.draw())
    head_at = (0.0, -legs - torso - 0.5 * head - 0.02, 0.0)
    prims.add_to_object(obj, rc.ELLIPSOID, head_at, (0.1 * k, 0.5 * head, 0.11 * k), PERSON, bank.draw())


def place_parked_cars(street: StreetLayout) -> None:
    """Cars parked along both kerbs, nose to tail with random gaps, some facing the other way."""
    rng, config = street.rng, street.config
    if config.parked_cars_per_100m <= 0:
        return
    mean_gap = max(0.6, 100.0 / config.parked_cars_per_100m - 4.3)
    for side in SIDES:
        s = street.s_min + rng.uniform(2.0, 10.0)
        while s < street.s_max:
            length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
            lat = side * (street.half_road - 0.15 - 0.5 * width)
            flip = math.pi if rng.random() < 0.3 else 0.0
            box = street.swept(s + 0.5 * length, lat, length, width, 0.0)
            if street.fits(box):
                _add_car(street, s + 0.5 * length, lat, length, width, flip + rng.uniform(-0.05, 0.05), 0.0)
                street.footprints.append(box)
            s += length + max(0.6, rng.exponential(mean_gap))


def place_moving_cars(street: StreetLayout, static: bool) -> None:
    """Cars driving in the lanes (none in a static drive): oncoming, ahead in the ego lane (at least as
    fast as the ego car, so it never closes the gap), or in the same-direction lane."""
    rng, config = street.rng, street.config
    n_moving = (
        0 if static else int(rng.poisson(config.moving_cars_per_100m * (street.s_max - street.s_min) / 100.0))
    )
    for _ in range(n_moving):
        lane = int(rng.integers(0, 3))
        length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
        lat = _LANES[lane] + rng.uniform(-0.1, 0.1)
        if lane == 0:
            speed, yaw_offset = -rng.uniform(5.0, 12.0), math.pi
        elif lane == 1:
            speed, yaw_offset = config.speed_mps + rng.uniform(0.0, 4.0), 0.0
        else:
            speed, yaw_offset = rng.uniform(4.0, 12.0), 0.0
        s = rng.uniform(street.s_min, street.s_max)
        if lane == 1 and s < 12.0:
            continue
        box = street.swept(s, lat, length, width, speed)
        if street.fits(box, ego_clear=0.7 if lane != 1 else -1e9):
            _add_car(street, s, lat, length, width, yaw_offset + rng.uniform(-0.03, 0.03), speed)
            street.footprints.append(box)


def place_standing_traffic(street: StreetLayout) -> None:
    """Cars standing in the oncoming or the same-direction lane (waiting, broken down)."""
    rng = street.rng
    n_traffic = int(rng.poisson(street.config.traffic_cars_per_100m * (street.s_max - street.s_min) / 100.0))
    for _ in range(n_traffic):
        lane = (0, 2)[int(rng.integers(0, 2))]
        lat = _LANES[lane] + rng.uniform(-0.15, 0.15)
        length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
        s = rng.uniform(street.s_min, street.s_max)
        box = street.swept(s, lat, length, width, 0.0)
        if street.fits(box):
            yaw_offset = (math.pi if lane == 0 else 0.0) + rng.uniform(-0.08, 0.08)
            _add_car(street, s, lat, length, width, yaw_offset, 0.0)
            street.footprints.append(box)


def place_pedestrians(street: StreetLayout, side: int, static: bool) -> None:
    """People on one sidewalk, between the street furniture (lat 0.5 m) and the trees (sidewalk - 0.7 m):
    walking along it (never in a static drive) or standing, facing anywhere."""
    rng, config = street.rng, street.config
    for s in street.positions(config.persons_per_100m, 1.5):
        lat = side * (street.half_road + rng.uniform(0.85, min(1.35, street.sidewalk - 0.5)))
        # The walking draw comes first, so a static drive draws it too.
        walking = rng.random() < config.walking_share and not static
        direction = 1.0 if rng.random() < 0.5 else -1.0
        speed = direction * rng.uniform(0.8, 1.6) if walking else 0.0
        yaw_offset = (0.0 if direction > 0 else math.pi) if walking else rng.uniform(-math.pi, math.pi)
        box = street.swept(s, lat, 0.5, 0.5, speed)
        if street.fits(box):
            _add_person(street, s, lat, speed, yaw_offset)
            street.footprints.append(box)

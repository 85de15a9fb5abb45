"""Lay out one drive of the driving world: road, ground bands, street furniture, buildings, cars, people.

Everything is placed in road coordinates (:class:`geosem.worlds.road.RoadFrame`); the static street
comes from :mod:`geosem.worlds.driving_street`, cars and people from :mod:`geosem.worlds.driving_traffic`.
The placement steps run in a fixed order and all draw from one numpy generator seeded by
``(config.seed, drive_index)`` (the material bank draws from it too), so that order *is* the scene:
reordering two steps, or two draws within one, changes every drive's files
(tests/unit/test_world_digests.py).
"""

from __future__ import annotations

import numpy as np

from geosem.worlds.driving import DrivingWorldConfig
from geosem.worlds.driving_scene import SIDES, DrivingScene, PrimitiveRows, SceneObjects, StreetLayout
from geosem.worlds.driving_street import (
    place_building_row,
    place_bushes,
    place_ground_bands,
    place_property_boundaries,
    place_road_surface,
    place_street_lights,
    place_traffic_signs,
    place_trees,
)
from geosem.worlds.driving_traffic import (
    place_moving_cars,
    place_parked_cars,
    place_pedestrians,
    place_standing_traffic,
)
from geosem.worlds.materials import DRESSINGS, MaterialBank
from geosem.worlds.road import RoadFrame

_S_BEHIND = 40.0  # scene starts this far behind the first camera position (the lidar looks back)


def build_scene(config: DrivingWorldConfig, drive_index: int) -> DrivingScene:
    """Lay out one drive's world (deterministic in ``config.seed`` and ``drive_index``)."""
    rng = np.random.default_rng([config.seed, drive_index])
    yaw_rate = float(rng.uniform(-config.max_yaw_rate_rps, config.max_yaw_rate_rps))
    static = bool(rng.random() < config.static_drive_share)  # nothing moves but the ego car
    street = _street(config, rng, yaw_rate)
    sky_material = street.bank.draw()
    road_starts, road_mats = place_road_surface(street)
    for side in SIDES:
        street.sides[side], boundaries = place_ground_bands(street)
        place_property_boundaries(street, side, boundaries)
    for side in SIDES:
        for row in (0, 1):
            place_building_row(street, side, row)
    for side in SIDES:
        place_trees(street, side)
        place_bushes(street, side)
        place_street_lights(street, side)
        place_traffic_signs(street, side)
    place_parked_cars(street)
    place_moving_cars(street, static)
    place_standing_traffic(street)
    for side in SIDES:
        place_pedestrians(street, side, static)
    return _scene(street, yaw_rate, static, road_starts, road_mats, sky_material)


def _street(config: DrivingWorldConfig, rng: np.random.Generator, yaw_rate: float) -> StreetLayout:
    """An empty street along the drive's road; its material bank draws its palette from ``rng``."""
    road = RoadFrame(yaw_rate / config.speed_mps if config.speed_mps > 0 else 0.0)
    duration = (config.frames - 1) / config.fps
    path_len = config.speed_mps * duration
    return StreetLayout(
        config=config,
        rng=rng,
        bank=MaterialBank(rng, config.palette_size, **DRESSINGS[config.dressing]),
        road=road,
        prims=PrimitiveRows(road),
        duration=duration,
        path_len=path_len,
        s_min=-_S_BEHIND,
        s_max=path_len + config.view_distance_m,
        half_road=0.5 * config.road_width_m,
        y_road=config.camera_height_m,
        y_raised=config.camera_height_m - config.kerb_height_m,
    )


def _scene(
    street: StreetLayout,
    yaw_rate: float,
    static: bool,
    road_starts: list[float],
    road_mats: list[int],
    sky_material: int,
) -> DrivingScene:
    """The laid-out street as a scene, its objects at their place at time 0."""
    prim_local, prim_local_yaw = street.prims.object_offsets()
    objects = SceneObjects(*(np.array([r[i] for r in street.objects], dtype=np.float64) for i in range(5)))
    scene = DrivingScene(
        config=street.config,
        road=street.road,
        yaw_rate=yaw_rate,
        static=static,
        s_min=street.s_min,
        s_max=street.s_max,
        half_road=street.half_road,
        y_road=street.y_road,
        y_raised=street.y_raised,
        road_starts=np.array(road_starts),
        road_mats=np.array(road_mats, dtype=np.int64),
        sides=street.sides,
        prims=street.prims.primitives(),
        prim_local=prim_local,
        prim_local_yaw=prim_local_yaw,
        objects=objects,
        materials=street.bank.freeze(),
        sky_material=sky_material,
    )
    scene.prims = scene.primitives_at(0.0)
    return scene

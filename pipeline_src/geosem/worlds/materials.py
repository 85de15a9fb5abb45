"""Materials and procedural textures of the synthetic worlds, shared by every class alike.

A world draws every surface's material from one :class:`MaterialBank` per scene, and the draw never sees
the surface's class: colour and texture carry no label information (tests/unit/test_honesty.py). A
*dressing* sets the distribution a dataset's materials come from, so datasets look different while
colour stays class-blind within each.

Everything per ray is kept as separate contiguous 1-D arrays (structure of arrays): numpy is 10-25x
slower on (N,3) arrays broadcast against (N,1) or on strided columns (benchmarks/world_speed.py --ops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Procedural texture kinds, identical for every class (the material draw never sees the class).
TEX_FLAT, TEX_NOISE, TEX_STRIPES, TEX_CHECKER = 0, 1, 2, 3

# Lattice of the value noise: one fixed periodic table, so a texture lookup is 8 gathers, no hashing.
_NOISE_BITS = 5
_NOISE_SIZE = 1 << _NOISE_BITS
_NOISE = np.random.default_rng(20240607).random(_NOISE_SIZE**3).astype(np.float32)


@dataclass
class Materials:
    """Material table as columns (float32, one row per material)."""

    base: tuple[np.ndarray, np.ndarray, np.ndarray]  # RGB in [0, 1]
    delta: tuple[np.ndarray, np.ndarray, np.ndarray]  # second colour minus base
    kind: np.ndarray  # int64 texture kind
    inv_scale: np.ndarray  # 1 / texture period in metres
    contrast: np.ndarray
    direction: tuple[np.ndarray, np.ndarray, np.ndarray]  # unit stripe direction
    offset: tuple[np.ndarray, np.ndarray, np.ndarray]  # texture-space offset

    def luminance(self, mats: np.ndarray) -> np.ndarray:
        r, g, b = self.base
        return 0.3 * r[mats] + 0.59 * g[mats] + 0.11 * b[mats]


# Dressings: how a world draws its materials (texture period range in metres, contrast range, weights of
# flat / noise / stripes / checker). Datasets get different looks from them while colour stays
# class-blind within each.
DRESSINGS: dict[str, dict] = {
    "kitti": {
        "scale_range": (0.2, 3.0),
        "contrast_range": (0.15, 0.7),
        "kind_weights": (0.25, 0.25, 0.25, 0.25),
    },
    "nyu": {"scale_range": (0.1, 1.5), "contrast_range": (0.1, 0.6), "kind_weights": (0.3, 0.3, 0.2, 0.2)},
    "sun": {"scale_range": (0.05, 0.6), "contrast_range": (0.2, 0.8), "kind_weights": (0.15, 0.45, 0.2, 0.2)},
    "ade": {
        "scale_range": (0.3, 2.5),
        "contrast_range": (0.05, 0.4),
        "kind_weights": (0.45, 0.25, 0.15, 0.15),
    },
}


class MaterialBank:
    """Draws materials from one per-scene palette. The draw never sees the class: that is the point."""

    def __init__(
        self,
        rng: np.random.Generator,
        palette_size: int,
        scale_range: tuple[float, float] = (0.2, 3.0),
        contrast_range: tuple[float, float] = (0.15, 0.7),
        kind_weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25),
    ) -> None:
        self._rng = rng
        self._palette = rng.uniform(0.06, 0.94, size=(palette_size, 3))
        self._scale = scale_range
        self._contrast = contrast_range
        self._kinds = np.asarray(kind_weights, np.float64) / np.sum(kind_weights)
        self._rows: list[tuple] = []

    def draw(self) -> int:
        rng = self._rng
        i, j = rng.integers(0, len(self._palette), size=2)
        kind = int(rng.choice(4, p=self._kinds))
        inv_scale = 1.0 / math.exp(rng.uniform(math.log(self._scale[0]), math.log(self._scale[1])))
        contrast = rng.uniform(*self._contrast)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        offset = rng.uniform(0.0, float(_NOISE_SIZE), size=3)
        self._rows.append((self._palette[i], self._palette[j], kind, inv_scale, contrast, direction, offset))
        return len(self._rows) - 1

    def freeze(self) -> Materials:
        rows = self._rows

        def columns(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            stacked = np.array([r[index] for r in rows], dtype=np.float32).reshape(-1, 3)
            return tuple(np.ascontiguousarray(stacked[:, k]) for k in range(3))  # type: ignore[return-value]

        base, second = columns(0), columns(1)
        return Materials(
            base=base,
            delta=tuple(second[k] - base[k] for k in range(3)),  # type: ignore[arg-type]
            kind=np.array([r[2] for r in rows], dtype=np.int64),
            inv_scale=np.array([r[3] for r in rows], dtype=np.float32),
            contrast=np.array([r[4] for r in rows], dtype=np.float32),
            direction=columns(5),
            offset=columns(6),
        )


def _value_noise(qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
    """Trilinear value noise with a smoothstep fade on the periodic lattice (float32 in, float32 out)."""
    fx, fy, fz = np.floor(qx), np.floor(qy), np.floor(qz)
    ix, iy, iz = fx.astype(np.int64), fy.astype(np.int64), fz.astype(np.int64)
    fx, fy, fz = qx - fx, qy - fy, qz - fz
    three, two = np.float32(3.0), np.float32(2.0)
    fx, fy, fz = fx * fx * (three - two * fx), fy * fy * (three - two * fy), fz * fz * (three - two * fz)
    mask, bits = _NOISE_SIZE - 1, _NOISE_BITS
    x0, x1 = (ix & mask) << (2 * bits), ((ix + 1) & mask) << (2 * bits)
    y0, y1 = (iy & mask) << bits, ((iy + 1) & mask) << bits
    z0, z1 = iz & mask, (iz + 1) & mask
    n = _NOISE
    a, b = x0 + y0, x0 + y1
    c, d = x1 + y0, x1 + y1
    v00 = n[a + z0]
    v00 += fz * (n[a + z1] - v00)
    v01 = n[b + z0]
    v01 += fz * (n[b + z1] - v01)
    v10 = n[c + z0]
    v10 += fz * (n[c + z1] - v10)
    v11 = n[d + z0]
    v11 += fz * (n[d + z1] - v11)
    v00 += fy * (v01 - v00)
    v10 += fy * (v11 - v10)
    return v00 + fx * (v10 - v00)


def surface_colour(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, mats: np.ndarray, table: Materials
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unshaded RGB channels in [0,1] (float32) of surface points given in texture space."""
    inv = table.inv_scale[mats]
    qx = px * inv + table.offset[0][mats]
    qy = py * inv + table.offset[1][mats]
    qz = pz * inv + table.offset[2][mats]
    kind = table.kind[mats]
    value = np.zeros(px.size, np.float32)
    sel = np.flatnonzero(kind == TEX_NOISE)
    if sel.size:
        x, y, z = qx[sel], qy[sel], qz[sel]
        noise = np.float32(0.65) * _value_noise(x, y, z)
        k, o = np.float32(2.7), np.float32(11.0)
        noise += np.float32(0.35) * _value_noise(k * x + o, k * y + o, k * z + o)
        value[sel] = np.clip(np.float32(1.8) * noise - np.float32(0.4), 0.0, 1.0)
    sel = np.flatnonzero(kind == TEX_STRIPES)
    if sel.size:
        m = mats[sel]
        d = table.direction
        phase = qx[sel] * d[0][m] + qy[sel] * d[1][m] + qz[sel] * d[2][m]
        value[sel] = (phase - np.floor(phase)) < 0.5
    sel = np.flatnonzero(kind == TEX_CHECKER)
    if sel.size:
        value[sel] = (np.floor(qx[sel]) + np.floor(qy[sel]) + np.floor(qz[sel])) % np.float32(2.0)
    w = table.contrast[mats] * value
    b, d = table.base, table.delta
    return b[0][mats] + w * d[0][mats], b[1][mats] + w * d[1][mats], b[2][mats] + w * d[2][mats]


def to_uint8(r: np.ndarray, g: np.ndarray, b: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Shaded RGB channels -> (N,3) uint8."""
    out = np.empty((r.size, 3), np.uint8)
    k = shade * np.float32(255.0)
    for channel, value in enumerate((r, g, b)):
        out[:, channel] = np.clip(value * k + np.float32(0.5), 0.0, 255.0)
    return out

"""Dataset sources: one module per dataset (download spec and converter) plus the synthetic world.

Converters register themselves by dataset name, like timm's model registry, so the command line and the
workflow reach every dataset the same way: ``geosem convert --dataset NAME``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

Converter = Callable[..., Path]
_CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str) -> Callable[[Converter], Converter]:
    def decorator(function: Converter) -> Converter:
        if name in _CONVERTERS:
            raise ValueError(f"converter {name!r} registered twice")
        _CONVERTERS[name] = function
        return function

    return decorator


def get_converter(name: str) -> Converter:
    _load_builtin()
    try:
        return _CONVERTERS[name]
    except KeyError:
        raise KeyError(f"no converter for dataset {name!r}; known: {sorted(_CONVERTERS)}") from None


def list_converters() -> list[str]:
    _load_builtin()
    return sorted(_CONVERTERS)


def _load_builtin() -> None:
    # Importing the modules runs their @register_converter decorators.
    from geosem.sources import ade20k, kitti, nyuv2, sunrgbd  # noqa: F401


def convert(name: str, raw_dir: Path, out_dir: Path, **parameters: Any) -> Path:
    """Run converter ``name``; a parameter it does not take is an error that names the converter.

    ``label_interpolation`` (only ``kitti`` takes it: the legacy protocol's bicubic labels) may be given
    to every converter, as the workflow does: the others always resize labels NEAREST, so ``nearest`` is
    what they do anyway and is dropped, while ``bicubic`` is refused.
    """
    converter = get_converter(name)
    accepted = inspect.signature(converter).parameters
    if "label_interpolation" not in accepted and parameters.get("label_interpolation") == "nearest":
        parameters = {k: v for k, v in parameters.items() if k != "label_interpolation"}
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise TypeError(f"converter {name!r} takes no parameter(s) {unknown}")
    return converter(Path(raw_dir), Path(out_dir), **parameters)

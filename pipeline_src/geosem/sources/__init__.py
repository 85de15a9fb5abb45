"""Dataset converters, one module per dataset, behind a registry (like timm's ``register_model``).

A converter module declares what the catalog needs in its decorator: its name (also the name of the
real dataset it reads), its version (part of every shard variant's name, so a new version converts
into a new folder), the label space its shards carry and the raw paths it reads (relative to
``raw/<dataset>/``). The registry discovers every module of this package and of the ``sources/``
folder of each ``GEOSEM_PLUGIN_PATH`` entry, so adding a dataset is one new file.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Converter = Callable[..., Path]


@dataclass(frozen=True)
class ConverterSpec:
    name: str
    version: str
    label_space: str
    reads: tuple[str, ...]  # raw paths it reads, relative to raw/<dataset>/
    function: Converter
    description: str = ""


_CONVERTERS: dict[str, ConverterSpec] = {}


def register_converter(
    name: str, *, version: str, label_space: str, reads: tuple[str, ...]
) -> Callable[[Converter], Converter]:
    def decorator(function: Converter) -> Converter:
        known = _CONVERTERS.get(name)
        if known is not None and known.function.__module__ != function.__module__:
            raise ValueError(f"converter {name!r} registered twice ({known.function.__module__})")
        doc = (inspect.getdoc(sys.modules[function.__module__]) or "").splitlines()
        _CONVERTERS[name] = ConverterSpec(
            name, str(version), label_space, tuple(reads), function, doc[0] if doc else ""
        )
        return function

    return decorator


def _discover() -> None:
    from geosem.registry import discover

    discover(sys.modules[__name__], "sources")


def converter_spec(name: str) -> ConverterSpec:
    _discover()
    try:
        return _CONVERTERS[name]
    except KeyError:
        raise KeyError(f"no converter {name!r}; known: {sorted(_CONVERTERS)}") from None


def list_converters() -> list[str]:
    _discover()
    return sorted(_CONVERTERS)


def convert(name: str, raw_dir: Path, out_dir: Path, **parameters: Any) -> Path:
    """Run converter ``name``; a parameter it does not take is an error that names the converter.

    ``label_interpolation`` (only ``kitti`` takes it: the legacy protocol's bicubic labels) may be given
    to every converter, as the workflow does: the others always resize labels NEAREST, so ``nearest`` is
    what they do anyway and is dropped, while ``bicubic`` is refused.
    """
    converter = converter_spec(name).function
    accepted = inspect.signature(converter).parameters
    if "label_interpolation" not in accepted and parameters.get("label_interpolation") == "nearest":
        parameters = {k: v for k, v in parameters.items() if k != "label_interpolation"}
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise TypeError(f"converter {name!r} takes no parameter(s) {unknown}")
    return converter(Path(raw_dir), Path(out_dir), **parameters)

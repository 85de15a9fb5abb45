"""Module discovery for the registries (tasks, converters): adding one is one new module, listed nowhere.

Every module of a registry's package is imported once, which runs its registering decorators (like
timm's ``register_model``). Modules outside the repository join through ``GEOSEM_PLUGIN_PATH``: a
``os.pathsep``-separated list of folders, each of which may hold a ``tasks/`` and a ``sources/`` folder
of modules; they are imported as modules of those packages, so a lab can keep its own tasks and
converters in its own folder and the planner, the config validation and the command line see them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from types import ModuleType

PLUGIN_PATH_VARIABLE = "GEOSEM_PLUGIN_PATH"
_discovered: set[str] = set()
# (package, its search path) already scanned: a lookup is a set test, not a directory listing (the
# planner looks up a converter or task for every run it plans).
_scanned: set[tuple[str, tuple[str, ...]]] = set()


def plugin_folders(subfolder: str) -> list[str]:
    """The ``subfolder`` of every folder named in ``GEOSEM_PLUGIN_PATH`` that exists."""
    roots = [root for root in os.environ.get(PLUGIN_PATH_VARIABLE, "").split(os.pathsep) if root]
    return [str(Path(root) / subfolder) for root in roots if (Path(root) / subfolder).is_dir()]


def discover(package: ModuleType, subfolder: str) -> None:
    """Import every module of ``package`` and of its plugin folders (each once per process)."""
    for folder in plugin_folders(subfolder):
        if folder not in package.__path__:
            package.__path__.append(folder)
    key = (package.__name__, tuple(package.__path__))
    if key in _scanned:
        return
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        if name not in _discovered and not info.name.startswith("_"):
            importlib.import_module(name)  # an import error propagates, naming the module
            _discovered.add(name)
    _scanned.add(key)

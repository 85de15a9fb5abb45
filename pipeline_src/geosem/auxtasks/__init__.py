"""Study B's auxiliary tasks, one module per task, behind a registry (like timm's ``register_model``).

Adding an auxiliary task is one module in this package (or in a ``GEOSEM_PLUGIN_PATH`` folder's
``auxtasks/``): an ``AuxTask`` subclass with ``@register_aux_task("name")``. The registry discovers the
module (``geosem.registry.discover``), so nothing else lists the tasks. ``depth`` in this package is not
a task: it holds study B's depth objective, augmentation and evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from geosem.auxtasks.base import AuxTask

__all__ = ["AuxTask", "create_aux_task", "get_aux_task", "list_aux_tasks", "register_aux_task"]

_AUX_TASKS: dict[str, type[AuxTask]] = {}


def register_aux_task(name: str) -> Callable[[type[AuxTask]], type[AuxTask]]:
    """Class decorator: register an ``AuxTask`` under ``name`` (which becomes its ``name``)."""

    def decorator(cls: type[AuxTask]) -> type[AuxTask]:
        if name in _AUX_TASKS and _AUX_TASKS[name] is not cls:
            raise ValueError(
                f"auxiliary task {name!r} registered twice ({_AUX_TASKS[name].__module__}, {cls.__module__})"
            )
        cls.name = name
        _AUX_TASKS[name] = cls
        return cls

    return decorator


def _discover() -> None:
    from geosem.registry import discover

    discover(sys.modules[__name__], "auxtasks")


def get_aux_task(name: str) -> type[AuxTask]:
    """The registered class of auxiliary task ``name``; an unknown name is a KeyError listing the known."""
    _discover()
    try:
        return _AUX_TASKS[name]
    except KeyError:
        raise KeyError(f"unknown auxiliary task {name!r}; known: {sorted(_AUX_TASKS)}") from None


def list_aux_tasks() -> list[str]:
    """Names of every registered auxiliary task, sorted."""
    _discover()
    return sorted(_AUX_TASKS)


def create_aux_task(name: str, **values: object) -> AuxTask:
    """An instance of auxiliary task ``name`` with its settings ``values`` (checked, defaults filled)."""
    return get_aux_task(name)(**values)

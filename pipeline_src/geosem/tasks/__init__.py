"""Training objectives, one module per task, behind a registry (like timm's ``register_model``).

Adding a task is one module in this package (or in a ``GEOSEM_PLUGIN_PATH`` folder's ``tasks/``): a
``Task`` subclass with ``@register_task("name")`` that declares its ``parameters`` (default, description
and JSON-schema type of each). The registry discovers the module; the config validation, the planner
and ``geosem tasks`` take the parameters from it, so nothing else lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from geosem.tasks.base import Param, Task, param

__all__ = ["Param", "Task", "get_task", "list_tasks", "param", "register_task", "resolve_parameters"]

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorator(cls: type[Task]) -> type[Task]:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} registered twice ({_TASKS[name].__module__}, {cls.__module__})")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def _discover() -> None:
    from geosem.registry import discover

    discover(sys.modules[__name__], "tasks")


def get_task(name: str) -> type[Task]:
    _discover()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(_TASKS)}") from None


def list_tasks() -> list[str]:
    _discover()
    return sorted(_TASKS)


def resolve_parameters(task: str, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` checked against the parameters task ``task`` declares, defaults filled in; an unknown
    key or a wrong value is an error naming ``where`` (e.g. ``pretrain.tasks.depth_mono_rand``)."""
    return get_task(task).resolve_parameters(values, where)

"""Training objectives, one module per task, behind a small registry (like timm's ``register_model``).

Adding a task is one module that subclasses ``Task`` plus ``@register_task("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

from geosem.tasks.base import Task

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorator(cls: type[Task]) -> type[Task]:
        if name in _TASKS:
            raise ValueError(f"task {name!r} registered twice")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def _load_builtin() -> None:
    from geosem.tasks import depth_mono, depth_supervised, flow, mae, segmentation  # noqa: F401


def get_task(name: str) -> type[Task]:
    _load_builtin()
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(_TASKS)}") from None


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_TASKS)

"""Task registry: config ``task`` name → ``Task`` subclass, imported only when used.

``task: detection``, ``task: segmentation`` and ``task: classification`` name the built-in tasks; any other
value of the form ``package.module:ClassName`` imports that class (it must subclass ``Task``), so users can plug
in their own task without touching this package. A missing or broken task module fails only when that task is used.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from se_plugins.engine.tasks.base import Task, move_to
from se_plugins.errors import ConfigError

TASKS: dict[str, str] = {
    "detection": "se_plugins.engine.tasks.detection:DetectionTask",
    "segmentation": "se_plugins.engine.tasks.segmentation:SegmentationTask",
    "classification": "se_plugins.engine.tasks.classification:ClassificationTask",
}
"""Built-in task names and the ``module:Class`` import path each resolves to."""

__all__ = ["TASKS", "Task", "build_task", "get_task_class", "move_to"]


def get_task_class(name: str) -> type[Task]:
    """Resolve a registered task name or a ``package.module:ClassName`` path to a ``Task`` subclass.

    Raises:
        ConfigError: unknown name, module that cannot be imported, missing class or not a ``Task`` subclass.
    """
    path = TASKS.get(name, name)
    if ":" not in path:
        raise ConfigError(f"task: {name!r} is not one of {', '.join(TASKS)} (or a 'package.module:Class' path)")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"task: {name!r}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task: {name!r}: {module_name} has no Task subclass named {class_name}")
    return cls


def build_task(cfg: DictConfig) -> Task:
    """Instantiate the task named by ``cfg.task`` with ``cfg``."""
    return get_task_class(cfg.task)(cfg)

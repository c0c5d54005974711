"""The tasks of the Panda environments, by name."""

from .avoid import Avoid
from .base import Task, TaskState, WaypointExpert
from .insert import Insert
from .pick_cube import PickCube
from .push import Push
from .reach import Reach

TASKS: dict[str, type[Task]] = {t.name: t for t in (Reach, PickCube, Push, Insert, Avoid)}


def make_task(name: str) -> Task:
    """A task by name (case-insensitive); unknown names get an error listing the valid ones."""
    key = name.lower().replace("_", "").replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[key]()


__all__ = ["TASKS", "Task", "TaskState", "WaypointExpert", "make_task"]

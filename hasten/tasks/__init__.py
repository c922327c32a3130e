"""Process types as plug-ins: the :class:`Task` interface, its registry and the built-in tasks.

- ``denoising`` (:mod:`hasten.tasks.denoising`): the sampling loop of a frozen DiT.
- ``reasoning`` (:mod:`hasten.tasks.reasoning`): the chain of thought of a frozen causal LM.
- ``unmasking`` (:mod:`hasten.tasks.unmasking`): the decoding loop of a frozen masked-diffusion LM.

A new process type registers a :class:`Task` subclass with :func:`register_task` (see
:mod:`hasten.tasks.registry` and docs/ARCHITECTURE.md); nothing else in hasten changes.
"""

from hasten.tasks.registry import (TASKS, Task, TaskSetup, accelerate, get_task, register_task, task_of_model,
                                   task_of_policy)
from hasten.tasks import denoising as _denoising  # noqa: F401  (registers "denoising")
from hasten.tasks import unmasking as _unmasking  # noqa: F401  (registers "unmasking"; before reasoning, whose
#                                                    plug-in takes any target with a ``generate``)
from hasten.tasks import reasoning as _reasoning  # noqa: F401  (registers "reasoning")

__all__ = ["TASKS", "Task", "TaskSetup", "accelerate", "get_task", "register_task", "task_of_model",
           "task_of_policy"]

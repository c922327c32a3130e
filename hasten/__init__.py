"""hasten: learned acceleration policies for frozen generative models."""

__version__ = "0.1.0"

from hasten.errors import HastenError  # noqa: E402
from hasten.models import load_generator  # noqa: E402
from hasten.models.reasoner import load_reasoner  # noqa: E402
from hasten.policies import Policy, PolicyConfig, accelerate, load_policy  # noqa: E402
from hasten.tasks import Task, get_task, register_task  # noqa: E402
import hasten.envs  # noqa: E402,F401  (registers hasten/Denoising-v0 and hasten/Reasoning-v0 with gymnasium)

__all__ = ["HastenError", "Policy", "PolicyConfig", "Task", "accelerate", "get_task", "load_generator", "load_policy",
           "load_reasoner", "register_task", "__version__"]

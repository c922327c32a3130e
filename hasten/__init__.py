"""hasten: learned acceleration policies for frozen generative models."""

__version__ = "0.1.0"

from hasten.errors import HastenError  # noqa: E402
from hasten.models import load_generator  # noqa: E402
from hasten.models.reasoner import load_reasoner  # noqa: E402
from hasten.policies import Policy, PolicyConfig, accelerate  # noqa: E402
import hasten.envs  # noqa: E402,F401  (registers hasten/Denoising-v0 and hasten/Reasoning-v0 with gymnasium)

__all__ = ["HastenError", "Policy", "PolicyConfig", "accelerate", "load_generator", "load_reasoner", "__version__"]

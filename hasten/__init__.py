"""hasten: learned acceleration policies for frozen generative models."""

__version__ = "0.1.0"

from hasten.errors import HastenError  # noqa: E402
from hasten.generators import load_generator  # noqa: E402

__all__ = ["HastenError", "load_generator", "__version__"]

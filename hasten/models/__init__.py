"""The frozen models: the DiT family registry and adapters, diffusers pipeline folders, the reasoning LMs.

``load_generator("embedded:shapes")`` returns the adapter of the embedded FLUX-architecture
generator; a path to a generator folder (written by ``hasten generator train``) works too.
"""

from hasten.models.registry import EMBEDDED, load_generator, resolve_generator_path

__all__ = ["EMBEDDED", "load_generator", "resolve_generator_path"]

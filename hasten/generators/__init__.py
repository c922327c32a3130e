"""Frozen generators and their acceleration knobs.

``load_generator("embedded:shapes")`` returns the adapter of the embedded FLUX-architecture
generator; a path to a generator folder (written by ``hasten generator train``) works too.
"""

from hasten.generators.registry import EMBEDDED, load_generator, resolve_generator_path

__all__ = ["EMBEDDED", "load_generator", "resolve_generator_path"]

"""Full-compute references, computed once per (class, noise seed) and cached in memory and on disk.

The fidelity reward compares each accelerated sample with the full-compute sample of the same
condition and noise. A reference costs a whole full-compute trajectory, so it is computed once,
batched, and written under the run directory (``references/shard-*.safetensors`` plus an
``index.json``), so a resumed run or a later evaluation never recomputes it.
"""

from __future__ import annotations

import logging
import os

import torch

from hasten.errors import HastenError
from hasten.io import read_json, read_safetensors, write_json_atomic

logger = logging.getLogger(__name__)

INDEX = "index.json"


class ReferenceCache:
    """Full-compute samples by (class index, noise seed) for one generator, step count and guidance.

    Args:
        generator: the frozen generator adapter.
        num_steps: schedule length of the references (the generator's default when None).
        guidance: guidance scale (the generator's default when None).
        directory: where shards are written and read (memory only when None).
    """

    def __init__(self, generator, num_steps: int | None = None, guidance: float | None = None,
                 directory: str | None = None, batch_size: int = 64):
        self.generator = generator
        self.num_steps = generator.default_steps if num_steps is None else int(num_steps)
        self.guidance = generator.default_guidance if guidance is None else float(guidance)
        self.directory = directory
        self.batch_size = batch_size
        self.images: dict[tuple[int, int], torch.Tensor] = {}
        self.shards: list[str] = []
        if directory and os.path.isfile(os.path.join(directory, INDEX)):
            self._load()

    def _identity(self) -> dict:
        return {"generator": os.path.abspath(self.generator.path) if self.generator.path else None,
                "num_steps": self.num_steps, "guidance": self.guidance}

    def _load(self) -> None:
        index = read_json(os.path.join(self.directory, INDEX))
        identity = self._identity()
        if any(index.get(k) != v for k, v in identity.items()):
            raise HastenError(f"{os.path.join(self.directory, INDEX)}: references of {index.get('generator')} at "
                              f"{index.get('num_steps')} steps, guidance {index.get('guidance')}; expected "
                              f"{identity['generator']} at {self.num_steps} steps, guidance {self.guidance}")
        for shard in index.get("shards", []):
            for key, image in read_safetensors(os.path.join(self.directory, shard)).items():
                label, seed = key.split("_")
                self.images[(int(label), int(seed))] = image
            self.shards.append(shard)

    def get(self, labels, seeds) -> torch.Tensor:
        """(B, C, H, W) references of the rows (class index, noise seed); missing ones are computed."""
        keys = [(int(c), int(s)) for c, s in zip(labels, seeds)]
        missing = self.missing(labels, seeds)
        if missing:
            self._compute(missing)
        return torch.stack([self.images[k] for k in keys])

    def missing(self, labels, seeds) -> list[tuple[int, int]]:
        """The (class, seed) keys of the rows that have no reference yet (sorted, unique)."""
        return sorted({(int(c), int(s)) for c, s in zip(labels, seeds)} - self.images.keys())

    def known(self, labels, seeds) -> dict[tuple[int, int], torch.Tensor]:
        """The references already held for these rows (what a Ray pool ships with a shard)."""
        keys = {(int(c), int(s)) for c, s in zip(labels, seeds)}
        return {k: self.images[k] for k in keys if k in self.images}

    def remember(self, known: dict[tuple[int, int], torch.Tensor]) -> None:
        """Hold references another process computed (what a Ray worker gets with a shard), in memory."""
        for key, image in known.items():
            self.images.setdefault(key, image)

    def add(self, labels, seeds, images: torch.Tensor) -> None:
        """Store references computed elsewhere (by a rollout worker); new ones are written to disk."""
        new, seen = [], set()
        for c, s, image in zip(labels, seeds, images):
            key = (int(c), int(s))
            if key not in self.images and key not in seen:
                seen.add(key)
                new.append((key, torch.as_tensor(image).clone()))
        if new:
            self._store([k for k, _ in new], torch.stack([image for _, image in new]))

    def _compute(self, keys: list[tuple[int, int]]) -> None:
        logger.info("computing %d full-compute references", len(keys))
        images, _ = self.generator.sample([c for c, _ in keys], [s for _, s in keys], num_steps=self.num_steps,
                                          guidance=self.guidance, batch_size=self.batch_size)
        self._store(keys, images.cpu())

    def _store(self, keys: list[tuple[int, int]], images: torch.Tensor) -> None:
        for key, image in zip(keys, images):
            self.images[key] = image.clone()
        if self.directory:
            self._write_shard(keys, images)

    def _write_shard(self, keys, images) -> None:
        from safetensors.torch import save_file

        os.makedirs(self.directory, exist_ok=True)
        name = f"shard-{len(self.shards):05d}.safetensors"
        tmp = os.path.join(self.directory, f".tmp-{name}")
        save_file({f"{c}_{s}": image.contiguous() for (c, s), image in zip(keys, images)}, tmp)
        os.replace(tmp, os.path.join(self.directory, name))
        self.shards.append(name)
        write_json_atomic(os.path.join(self.directory, INDEX), {**self._identity(), "shards": self.shards})

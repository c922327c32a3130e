"""The unmasking task (a plug-in, all in this folder): the decoding loop of a frozen masked-diffusion LM.

- :mod:`.data`: the canvas of ``embedded:arith``'s problems; :mod:`.model`: the ModernBERT denoiser with its
  dKV-cache forward; :mod:`.recipe`: how ``embedded:dllm`` is trained (``recipe: dllm``);
- :mod:`.decode`: batched unmasking, one decision per row and call; :mod:`.peers`: the training-free rules;
- :mod:`.env`: ``hasten/Unmasking-v0``; :mod:`.head`: the ``commit`` / ``reuse`` head;
  :mod:`.accelerate`: ``hasten.accelerate`` around the LM's ``generate``;
- :mod:`.compare`: ``hasten compare --task unmasking``; :mod:`.task`: the :class:`~hasten.tasks.Task`.
"""

import gymnasium

from hasten.tasks.unmasking.task import UnmaskingTask

if "hasten/Unmasking-v0" not in gymnasium.registry:
    gymnasium.register(id="hasten/Unmasking-v0", entry_point="hasten.tasks.unmasking.env:UnmaskingEnv",
                       vector_entry_point="hasten.tasks.unmasking.env:UnmaskingVectorEnv")

__all__ = ["UnmaskingTask"]

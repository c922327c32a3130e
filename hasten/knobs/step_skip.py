"""Step-Skip: a row jumps over ``k`` further schedule intervals with its current or forecast
model output.

The skip itself happens in the sampler (:mod:`hasten.models.adapter`); what is step-skip specific
here is the table from a step_skip level to the intervals jumped. What a skipped step uses instead
of a model call is :class:`hasten.knobs.forecast.OutputForecast`.

Example:
    >>> SKIP_INTERVALS.tolist()
    [0, 1, 2, 3, 5, 7]
"""

from __future__ import annotations

import torch

from hasten.knobs.levels import STEP_SKIP

#: step_skip level -> schedule intervals jumped after the call (3, 5 and 7 were added after the first
#: policies: with the noise-space forecast a few calls far apart beat uniform steps by 5-7 dB)
SKIP_INTERVALS = torch.tensor(STEP_SKIP.levels)

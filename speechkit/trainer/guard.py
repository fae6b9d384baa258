"""The non-finite guard: an update whose loss or gradient is NaN/inf is skipped, and leaves the
model exactly as it was.

A skipped update makes no optimizer step, so the parameters are untouched; but the forward pass
has already written the buffers (BatchNorm running statistics: NaN ones after a NaN input).
:meth:`NonFiniteGuard.snapshot` copies them before the forward pass and :meth:`skip` puts them
back. ``common.max_nonfinite_steps`` skipped updates in a row stop the run (fairseq stops at
the first; a single corrupt file should not end a week-long job).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger("speechkit.trainer")


class NonFiniteGuard:
    """Buffer snapshots and the count of consecutive skipped updates.

    Args:
        module: the model and criterion (their buffers are restored after a skip).
        max_streak: ``common.max_nonfinite_steps``.

    Attributes:
        streak: consecutive skipped updates so far (checkpointed as ``nonfinite_streak``).
    """

    def __init__(self, module: nn.Module, max_streak: int):
        self.max_streak = max_streak
        self.streak = 0
        self._buffers = list(module.buffers())
        self._copies = [torch.empty_like(b) for b in self._buffers]

    def snapshot(self) -> None:
        """Copy the buffers (call before the update's first forward pass)."""
        if self._buffers:
            torch._foreach_copy_(self._copies, self._buffers)

    def passed(self) -> None:
        """The update was applied: the streak ends."""
        self.streak = 0

    def skip(self, update: int) -> None:
        """The update is skipped: buffers back as they were at :meth:`snapshot`, a warning.

        Args:
            update: the number of the skipped update (1-based, for the message).

        Raises:
            FloatingPointError: ``max_streak`` updates in a row were skipped.
        """
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._copies)
        self.streak += 1
        logger.warning(
            "update %d skipped: non-finite loss or gradient (%d in a row)", update, self.streak
        )
        if self.streak >= self.max_streak:
            raise FloatingPointError(
                f"stopping: {self.streak} consecutive updates had a NaN/inf loss or gradient "
                "(common.max_nonfinite_steps); lower the LR, enable clipping "
                "(optimization.clip_norm) or check the data"
            )

"""Batch tensors written once, in the memory a DataLoader worker hands to the main process.

A worker sends a batch to the main process through shared memory: a tensor in ordinary memory
is copied into a new shared segment when the batch is pickled. Collating with ``torch.stack``
into ordinary memory therefore writes every sample twice more after decoding it, and for
audio batches (200 x 2 s is 26 MB) those writes, with the page faults of fresh memory, cost
more CPU than decoding the crops. ``torch.utils.data.default_collate`` avoids the second copy
by stacking into shared memory inside a worker; :func:`empty_batch` does the same for
speechkit's own collaters, and a dataset's ``__getitems__`` can decode every crop of a batch
straight into the rows of one such buffer, which :func:`stack_rows` then returns as the batch
without copying.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import get_worker_info

from speechkit.data.wav import PCM16_SCALE

__all__ = ["empty_batch", "float_audio", "stack_rows"]


def empty_batch(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor of ``shape``; inside a DataLoader worker its storage is shared
    memory, so sending it to the main process copies nothing."""
    shape = tuple(int(n) for n in shape)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= n
    itemsize = torch.empty((), dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(numel * itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(rows)``: without a copy when ``rows`` lie one after the other in one
    storage (``buffer[0], buffer[1], ...`` of a contiguous buffer, as a ``__getitems__`` that
    decoded into an :func:`empty_batch` returns them: the result is then a view of that
    memory), else stacked into a new :func:`empty_batch`.

    Raises:
        ValueError: ``rows`` is empty. RuntimeError: the rows differ in shape or dtype.
    """
    if not rows:
        raise ValueError("stack_rows needs at least one tensor")
    first = rows[0]
    nbytes = first.numel() * first.element_size()
    storage = first.untyped_storage().data_ptr()
    if first.device.type == "cpu" and all(
        row.is_contiguous()
        and row.shape == first.shape
        and row.dtype == first.dtype
        and row.untyped_storage().data_ptr() == storage
        and row.data_ptr() == first.data_ptr() + i * nbytes
        for i, row in enumerate(rows)
    ):
        return first.as_strided(
            (len(rows), *first.shape), (first.numel(), *first.stride()), first.storage_offset()
        )
    out = empty_batch((len(rows), *first.shape), first.dtype)
    return torch.stack(list(rows), out=out)


def float_audio(samples: torch.Tensor) -> torch.Tensor:
    """Audio samples as float: an int16 tensor of 16-bit PCM (an int16 batch buffer, a noise
    bank) scaled by ``PCM16_SCALE`` (exact, a power of 2) on its device; any other tensor as
    it is."""
    if samples.dtype == torch.int16:
        return samples.float().mul_(PCM16_SCALE)
    return samples

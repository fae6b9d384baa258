"""Summing logging outputs over micro-batches, ranks and log intervals."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping


def sum_logging_outputs(outputs: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise sum of logging dicts (missing keys count as 0)."""
    total: dict[str, float] = {}
    for out in outputs:
        for k, v in out.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


class IntervalMeter:
    """Accumulates summed logging outputs and timing between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.updates = 0
        self.grad_norm_sum = 0.0
        self.grad_norm_count = 0
        self.start = time.perf_counter()

    def add(self, sums: Mapping[str, float], grad_norm: float | None) -> None:
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.updates += 1
        if grad_norm is not None:
            self.grad_norm_sum += grad_norm
            self.grad_norm_count += 1

    def extras(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"ups": self.updates / elapsed}
        if self.grad_norm_count:
            out["gnorm"] = self.grad_norm_sum / self.grad_norm_count
        return out

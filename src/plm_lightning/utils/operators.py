"""Counting the operators a call dispatches: on a GPU each is at least one kernel launch, so the count measures
launch overhead without a GPU (benchmarks/ops.py; the budget test of the PLM call)."""

from __future__ import annotations

from collections import Counter
from typing import Callable


def _is_operator(event) -> bool:
    return event.name.startswith("aten::") or event.name.startswith("autograd::engine::evaluate_function")


def top_level_operators(fn: Callable[[], object]) -> list[str]:
    """Names of the operators ``fn()`` dispatches that are not inside another operator: the aten calls made from
    Python and, for a backward pass, the autograd nodes it evaluates (each runs its own kernels), in order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = []
    for event in prof.events():
        if not _is_operator(event):
            continue
        parent = event.cpu_parent
        while parent is not None and not _is_operator(parent):
            parent = parent.cpu_parent
        if parent is None:
            names.append(event.name)
    return names


def operator_histogram(names: list[str]) -> list[tuple[str, int]]:
    """(name, count), most frequent first."""
    return Counter(names).most_common()

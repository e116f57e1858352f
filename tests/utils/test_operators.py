"""The operator counter behind benchmarks/ops.py and the PLM call's operator ceiling."""

import torch

from plm_lightning.utils.operators import operator_histogram, top_level_operators


def test_counter_sees_forward_operators_and_backward_nodes():
    w = torch.ones(3, requires_grad=True)
    names = top_level_operators(lambda: (w * 2).sum().backward())
    assert "aten::mul" in names and "aten::sum" in names
    assert any(n.startswith("autograd::") and "MulBackward" in n for n in names)
    # nested calls are not counted twice: one einsum is one operator, whatever it runs inside
    assert (
        top_level_operators(lambda: torch.einsum("ij,jk->ik", torch.ones(2, 2), torch.ones(2, 2))).count("aten::einsum")
        == 1
    )


def test_histogram_counts_names_most_frequent_first():
    assert operator_histogram(["aten::a", "aten::b", "aten::b"]) == [("aten::b", 2), ("aten::a", 1)]

"""The PLM call launches few operators (each is at least one kernel launch on a GPU): the count of one forward +
backward at the benchmark's headline shape stays under a ceiling, so restructuring cannot creep back."""

import torch
import torch.nn.functional as F

from plm_lightning.manifold import PLMLoss, PLMSimilarity, ProxyManifold
from plm_lightning.utils.operators import top_level_operators

# Measured 345 with torch 2.14 (benchmarks/ops.py: 876 before the greedy selection, the pieces and the loss were
# restructured). The speed issue's target, 150, is not reached: the greedy test is sequential over the M
# candidates (8 operators per candidate position).
MAX_OPERATORS = 350


def _plm_step(b=120, d=512, k=100, **knobs):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(b, d, generator=g), dim=1)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_(True)
    proxies = ProxyManifold(k, d, 2)
    loss_fn = PLMLoss(PLMSimilarity(**knobs), proxy_neighbours=5)

    def step():
        z.grad = None
        proxies.zero_grad(set_to_none=True)
        loss_fn(z, x, proxies)["loss"].backward()

    step()  # first-call work (lazy initialisation) is not part of a training step
    return step


def test_plm_step_stays_under_the_operator_ceiling():
    count = len(top_level_operators(_plm_step()))
    assert count <= MAX_OPERATORS, f"one PLM forward + backward launches {count} operators (> {MAX_OPERATORS})"


def test_each_greedy_position_costs_a_few_operators():
    # The only loop of the call runs over candidate positions: 2 more positions cost at most 2 x 8 operators.
    small = len(top_level_operators(_plm_step(max_candidates=8)))
    large = len(top_level_operators(_plm_step(max_candidates=10)))
    assert 0 < large - small <= 16

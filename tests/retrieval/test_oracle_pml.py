"""Our retrieval metrics against an independent implementation: pytorch-metric-learning's AccuracyCalculator
(docs/protocols.md, "Reference oracle").

PML is called the documented way for the same-set protocol, ``get_accuracy(query, query_labels)`` with the reference
omitted (PML >= 2: the query set is its own reference, ``ref_includes_query=True`` internally, and the query is removed
from its own neighbours *by index*: ``inference.return_results``), ``k="max_bin_count"`` (search depth = largest class
size - 1, enough for MAP@R) and an exact brute-force kNN, ``CustomKNN(LpDistance(normalize_embeddings=False,
power=2))``, so no faiss is involved on its side. Its ``precision_at_1`` is our R@1; R@K for K > 1 (a hit rate, which
PML's ``precision_at_k`` is not) comes from the ``calculate_recall_at_*`` metrics of the subclass below. Ours are
percentages, PML's fractions.

Singleton classes (a query that is the only item of its class, no correct answer) are treated differently:
  * PML excludes such "lone" queries from *every* metric (``not_lone_query_mask``), precision_at_1 included;
  * we count them as misses for every R@K and exclude them from MAP@R and R-precision (evaluate_embeddings' docstring).
The main comparisons therefore use data without singleton classes; ``test_singleton_conventions`` includes some and
checks the exact relation between the two conventions (R@K scaled by the fraction of non-lone queries; MAP@R and
R-precision equal).

Ties: PML's CustomKNN takes ``torch.topk``, whose order among equal distances is unspecified, while the protocol (and
our search) orders by (distance, gallery index). Where ties can change a metric (equidistant items of different
classes: exact duplicates across classes, integer grids) the oracle uses ``StableCustomKNN``: the same PML distance
and the same PML self-removal, but a stable sort, i.e. ties by index. Plain CustomKNN is compared on data whose only
ties are between items of the same class, which no metric can see.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN, return_results
except ImportError as exc:  # the `test` extra installs it
    pytest.skip(f"pytorch-metric-learning is not installed ({exc}); pip install -e '.[test]'", allow_module_level=True)

from plm_lightning.retrieval import evaluate_embeddings, faiss_available

KS = (1, 2, 4, 8)
TOL = 1e-6
# "auto" and "torch" (the default rank-counting engine of the core); "faiss" selects its top-k search engine.
BACKENDS = (
    "auto",
    "torch",
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")),
)


class RecallAtKCalculator(AccuracyCalculator):
    """PML plus Recall@K (hit rate) for K in 1, 2, 4, 8, following PML's convention for lone queries (excluded)."""

    def _recall_at(self, k, knn_labels, query_labels, not_lone_query_mask):
        if not bool(not_lone_query_mask.any()):
            return float("nan")
        knn_labels, query_labels = knn_labels[not_lone_query_mask], query_labels[not_lone_query_mask]
        assert knn_labels.shape[1] >= k, "the search depth (k='max_bin_count') must cover K"
        return (knn_labels[:, :k] == query_labels[:, None]).any(dim=1).double().mean().item()

    def calculate_recall_at_1(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(1, knn_labels, query_labels, not_lone_query_mask)

    def calculate_recall_at_2(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(2, knn_labels, query_labels, not_lone_query_mask)

    def calculate_recall_at_4(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(4, knn_labels, query_labels, not_lone_query_mask)

    def calculate_recall_at_8(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(8, knn_labels, query_labels, not_lone_query_mask)

    def requires_knn(self):
        return super().requires_knn() + [f"recall_at_{k}" for k in KS]


class StableCustomKNN(CustomKNN):
    """CustomKNN with ties ordered by reference index (a stable sort instead of topk); same distance, same
    self-removal by index."""

    def __call__(self, query, k, reference, ref_includes_query=False):
        if ref_includes_query:
            k = k + 1
        mat = self.distance(query, reference)
        distances, indices = torch.sort(mat, dim=1, stable=True)
        return return_results(distances[:, :k], indices[:, :k], ref_includes_query)


class ReversedTiesKNN(CustomKNN):
    """Ties by descending index: a deliberately different tie rule, to show that the data's ties matter."""

    def __call__(self, query, k, reference, ref_includes_query=False):
        if ref_includes_query:
            k = k + 1
        mat = self.distance(query, reference)
        distances, indices = torch.sort(mat.flip(1), dim=1, stable=True)
        return return_results(distances[:, :k], mat.shape[1] - 1 - indices[:, :k], ref_includes_query)


def pml_metrics(x, labels, knn_cls=StableCustomKNN):
    calc = RecallAtKCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision") + tuple(f"recall_at_{k}" for k in KS),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=knn_cls(LpDistance(normalize_embeddings=False, power=2)),
    )
    # PML >= 2: the same-set call omits the reference (query = reference, self removed by index).
    result = calc.get_accuracy(x, labels)
    assert result["recall_at_1"] == pytest.approx(result["precision_at_1"], abs=1e-12)  # the subclass is sound
    return result


def ours(x, labels, *, normalize, backend):
    return evaluate_embeddings(x, labels, KS, normalize=normalize, backend=backend, map_r=True, compute_nmi=False)


def assert_same(our, pml, scale=1.0):
    """Our percentages against PML's fractions. ``scale`` converts PML's R@K (over non-lone queries) to ours."""
    assert our["R@1"] / 100 == pytest.approx(pml["precision_at_1"] * scale, abs=TOL)
    for k in KS:
        assert our[f"R@{k}"] / 100 == pytest.approx(pml[f"recall_at_{k}"] * scale, abs=TOL), k
    assert our["MAP@R"] / 100 == pytest.approx(pml["mean_average_precision_at_r"], abs=TOL)
    assert our["R-precision"] / 100 == pytest.approx(pml["r_precision"], abs=TOL)


# --- data -----------------------------------------------------------------------------------------------------------


def class_sizes(rng, pairs=150, larger=12):
    """Many classes of size 2 (R = 1: MAP@R and R-precision equal R@1 per query) and some of size 3..12; the largest
    class has 12 items, so k='max_bin_count' searches 11 deep, enough for R@8."""
    sizes = [2] * pairs + list(rng.integers(3, 13, size=larger - 1)) + [12]
    rng.shuffle(sizes)
    return np.repeat(np.arange(len(sizes)), sizes)


def gaussian_with_duplicates(seed, *, cross_class):
    """Gaussian embeddings in which some rows are exact copies of others: of the same class only, or (cross_class)
    also of other classes, so that a query's nearest neighbour may be a copy of another class at distance 0."""
    rng = np.random.default_rng(seed)
    labels = class_sizes(rng)
    n = len(labels)
    means = rng.normal(size=(labels.max() + 1, 16))
    x = (means[labels] + 0.9 * rng.normal(size=(n, 16))).astype(np.float32)  # clustered: metrics far from 0 and 1
    for i in rng.choice(n, size=40, replace=False):
        same = np.flatnonzero(labels == labels[i])
        j = rng.choice(same[same != i])
        x[j] = x[i]
    if cross_class:
        for i in rng.choice(n, size=40, replace=False):
            j = rng.integers(n)
            x[j] = x[i]  # a copy, possibly in another class; also makes triples of copies
    # Shuffle so that copies and classes are not in index order.
    perm = rng.permutation(n)
    return torch.from_numpy(x[perm]), torch.from_numpy(labels[perm])


def integer_grid(seed):
    """Integer points near a class centre in {0, .., 3}^4 (each coordinate moved by -1, 0 or +1 with probability 0.4):
    many exact duplicates within and across classes and many equidistant neighbours (all squared distances are small
    integers), i.e. ties everywhere, including at the K and R boundaries."""
    rng = np.random.default_rng(seed)
    labels = class_sizes(rng)
    centres = rng.integers(0, 4, size=(labels.max() + 1, 4))
    shape = (len(labels), 4)
    x = (centres[labels] + rng.integers(-1, 2, size=shape) * (rng.random(shape) < 0.4)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(labels)


# --- comparisons ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_class_duplicates_against_plain_custom_knn(seed, normalize, backend):
    x, labels = gaussian_with_duplicates(seed, cross_class=False)
    # normalize=True: PML gets the vectors our evaluation ranks (F.normalize of the float32 input, the same bits).
    pml = pml_metrics(F.normalize(x, dim=1) if normalize else x, labels, knn_cls=CustomKNN)
    assert_same(ours(x, labels, normalize=normalize, backend=backend), pml)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_class_duplicates(seed, normalize, backend):
    x, labels = gaussian_with_duplicates(seed, cross_class=True)
    pml = pml_metrics(F.normalize(x, dim=1) if normalize else x, labels)
    our = ours(x, labels, normalize=normalize, backend=backend)
    assert_same(our, pml)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_grid_ties(seed, backend):
    # normalize=False only: on the raw grid both sides compute every distance exactly (small integers), so ties are
    # ties on both sides. After normalisation, points that are equidistant in exact arithmetic can differ by one
    # rounding step between PML's cdist (matrix product) and our canonical float64 sum, and ties would no longer be
    # the same ties; the normalised comparison is covered by the Gaussian data above.
    x, labels = integer_grid(seed)
    assert len(torch.unique(x, dim=0)) < 0.75 * len(x)  # duplicates galore
    pml = pml_metrics(x, labels)
    assert_same(ours(x, labels, normalize=False, backend=backend), pml)
    # The ties are decisive: breaking them by *descending* index gives different numbers, so the agreement above
    # checks the tie rule too.
    reversed_ties = pml_metrics(x, labels, knn_cls=ReversedTiesKNN)
    assert any(abs(reversed_ties[k] - pml[k]) > 1e-3 for k in pml)


def test_column_zero_is_not_self():
    """The protocol's pitfall: with exact duplicates the first neighbour need not be the query itself. Dropping column
    0 of a full ranking instead of removing self by index gives different numbers; PML and we agree on the correct
    ones."""
    x, labels = gaussian_with_duplicates(3, cross_class=True)
    our = ours(x, labels, normalize=False, backend="torch")
    assert_same(our, pml_metrics(x, labels))
    d = torch.cdist(x.double(), x.double())
    order = torch.sort(d, dim=1, stable=True).indices
    assert bool((order[:, 0] != torch.arange(len(x))).any())  # some query has a copy at a lower index
    wrong_r1 = (labels[order[:, 1]] == labels).double().mean().item() * 100
    assert wrong_r1 != pytest.approx(our["R@1"], abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_singleton_conventions(backend):
    x, labels = gaussian_with_duplicates(4, cross_class=True)
    labels = labels.clone()
    lone = torch.tensor([3, 50, 97, 200])
    labels[lone] = torch.arange(10_000, 10_000 + len(lone))  # four classes of a single item (or more: a pair's
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)  # partner is left alone too)
    n, n_not_lone = len(labels), int((counts[inverse] > 1).sum())
    assert n - n_not_lone >= len(lone)
    pml = pml_metrics(x, labels)
    our = ours(x, labels, normalize=False, backend=backend)
    # PML averages R@K over the non-lone queries only; we count the lone ones as misses: ours = PML * (n - lone) / n.
    # (the lone items stay in the gallery on both sides: other queries can still retrieve them, as misses)
    assert_same(our, pml, scale=n_not_lone / n)

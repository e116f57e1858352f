"""The rank engine against Python-loop oracles and the search engine: identical numbers."""

import math

import pytest
import torch
import torch.nn.functional as F
from oracle import oracle_metrics, oracle_ranks

from plm_lightning.retrieval import evaluate as evaluate_module
from plm_lightning.retrieval import (
    evaluate_embeddings,
    evaluate_query_gallery,
    faiss_available,
    positive_ranks,
)
from plm_lightning.retrieval import metrics as metrics_module
from plm_lightning.retrieval import ranks as ranks_module
from plm_lightning.retrieval import search as search_module
from plm_lightning.retrieval.ranks import RANK_BEYOND, canonical_sq_dist

BACKENDS = [
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed")),
    "torch",
]


# ---------------------------------------------------------------------------------------------
# Data


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_data(n=90, d=8, seed=0):
    return torch.randn(n, d, generator=gen(seed))


def duplicate_data(seed=1):
    # 45 distinct rows plus 30 exact copies, shuffled: copies before and after their originals.
    g = gen(seed)
    base = torch.randn(45, 5, generator=g)
    x = torch.cat([base, base[:30]])
    return x[torch.randperm(len(x), generator=g)]


def grid_data(n=100, seed=2):
    # Integer points of a 3^3 grid: ~4 copies of each point, integer distances, ties everywhere.
    return torch.randint(0, 3, (n, 3), generator=gen(seed)).float()


def offset_data(seed=3):
    # Tiny spread around a large offset (unnormalised): the float32 GEMM distance is useless
    # (catastrophic cancellation), so nearly everything goes through the exact band.
    return 1000.0 + 0.01 * torch.randn(70, 4, generator=gen(seed))


def clustered_data(seed=4):
    g = gen(seed)
    labels = torch.randint(0, 12, (110,), generator=g)
    x = torch.randn(12, 16, generator=g)[labels] + 0.9 * torch.randn(110, 16, generator=g)
    return x, labels


DATASETS = {
    "random": random_data,
    "duplicates": duplicate_data,
    "grid": grid_data,
    "offset": offset_data,
}


def labels_for(n, kind, seed=5):
    g = gen(seed)
    if kind == "pairs":  # many classes of size 2 (plus one singleton if n is odd)
        labels = torch.arange(n) // 2
        return labels[torch.randperm(n, generator=g)]
    if kind == "singletons+":  # a third singletons, the rest in small classes
        labels = torch.randint(0, n // 6, (n,), generator=g)
        labels[: n // 3] = torch.arange(1000, 1000 + n // 3)
        return labels[torch.randperm(n, generator=g)]
    return torch.randint(0, 4, (n,), generator=g)  # "few": large classes


# ---------------------------------------------------------------------------------------------
# positive_ranks against the oracle


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("label_kind", ["pairs", "singletons+", "few"])
@pytest.mark.parametrize("tile", [None, 7, 64])
def test_same_set_ranks_match_oracle(name, label_kind, tile):
    x = DATASETS[name]()
    labels = labels_for(len(x), label_kind)
    best_limit = 10
    result = positive_ranks(x, labels, best_limit=best_limit, tile=tile)
    expected = oracle_ranks(x, labels, x, labels, exclude_self=True)
    for q, ranks in enumerate(expected):
        r = len(ranks)
        assert result.num_positives[q].item() == r
        got = result.ranks[q].tolist()
        for j, rank in enumerate(ranks):
            limit = max(best_limit, r) if j == 0 else r
            assert got[j] == (rank if rank < limit else RANK_BEYOND), (q, j)
        assert all(v == RANK_BEYOND for v in got[r:])


@pytest.mark.parametrize("name", ["random", "grid", "duplicates"])
def test_only_nearest_positive(name):
    x = DATASETS[name]()
    labels = labels_for(len(x), "few")
    result = positive_ranks(x, labels, best_limit=5, all_positives=False, tile=16)
    assert result.ranks.shape[1] == 1
    expected = oracle_ranks(x, labels, x, labels, exclude_self=True)
    for q, ranks in enumerate(expected):
        want = ranks[0] if ranks and ranks[0] < 5 else RANK_BEYOND
        assert result.ranks[q, 0].item() == want


def test_canonical_distance_is_bit_identical_to_search():
    x = random_data(n=40, d=7)
    xt = x.T.contiguous()
    q = torch.arange(40).repeat_interleave(40)
    g = torch.arange(40).repeat(40)
    ours = canonical_sq_dist(x, x, q, g, max_pairs=100)
    theirs = search_module._exact_sq_dist(x, xt, torch.arange(40).repeat(40, 1))
    assert torch.equal(ours, theirs.reshape(-1))


# ---------------------------------------------------------------------------------------------
# evaluate_embeddings: rank engine == search engine == oracle


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("label_kind", ["pairs", "singletons+", "few"])
def test_same_set_metrics_match_oracle_and_search(name, label_kind):
    x = DATASETS[name]()
    labels = labels_for(len(x), label_kind)
    ks = (1, 2, 4, 8, 30)
    for normalize in (True, False):
        prepared = F.normalize(x.float(), dim=1) if normalize else x
        expected = oracle_metrics(prepared, labels, prepared, labels, ks, exclude_self=True)
        options = dict(normalize=normalize, compute_nmi=False)
        ours = evaluate_embeddings(x, labels, ks, engine="ranks", memory_budget_mb=1e-3, **options)
        search = evaluate_embeddings(x, labels, ks, engine="search", backend="torch", **options)
        assert ours == search  # bit-identical, not approximately equal
        assert ours == pytest.approx(expected, abs=1e-9, nan_ok=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_engine_equals_search_backends(backend):
    x, labels = clustered_data()
    for ks, map_r in (((1, 2, 4, 8), True), ((1, 10, 100), True), ((1, 5), False)):
        search = evaluate_embeddings(x, labels, ks, engine="search", backend=backend, map_r=map_r, compute_nmi=False)
        for budget in (1e-4, 0.05, 256.0):
            ours = evaluate_embeddings(x, labels, ks, map_r=map_r, compute_nmi=False, memory_budget_mb=budget)
            assert ours == search


@pytest.mark.parametrize("tile", [1, 3, 7, 50, 64, 65, 109, 110, 500])
def test_uneven_tiles_split_symmetric_blocks(tile):
    # Tiles of 7 over 110 items: the last chunk has 5 rows, so off-diagonal tiles are 7 x 5;
    # 64/65 exercise the grouped screening with and without a remainder.
    x, labels = clustered_data()
    x = F.normalize(x, dim=1)
    reference = positive_ranks(x, labels, best_limit=20)
    result = positive_ranks(x, labels, best_limit=20, tile=tile)
    assert torch.equal(result.ranks, reference.ranks)
    expected = oracle_ranks(x, labels, x, labels, exclude_self=True)
    firsts = [r[0] if r and r[0] < max(20, len(r)) else RANK_BEYOND for r in expected]
    assert result.ranks[:, 0].tolist() == firsts


def test_all_identical_points_tie_by_index():
    x = torch.zeros(30, 4)
    labels = torch.arange(30) % 3
    result = positive_ranks(x, labels, best_limit=29)
    # Query q ranks every other item by index; its positives come at their index positions.
    for q in range(30):
        others = [j for j in range(30) if j != q]
        want = [pos for pos, j in enumerate(others) if j % 3 == q % 3]
        r = len(want)
        got = result.ranks[q, :r].tolist()
        assert got[0] == want[0]
        assert [g for g in got[1:]] == [w if w < r else RANK_BEYOND for w in want[1:]]
    metrics = evaluate_embeddings(x, labels, (1, 2, 4), normalize=False, compute_nmi=False)
    search = evaluate_embeddings(x, labels, (1, 2, 4), normalize=False, compute_nmi=False, engine="search")
    assert metrics == search


def test_duplicates_of_other_classes_come_first():
    # Items 0 and 2 are identical but of different classes: each is the other's first neighbour.
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    result = positive_ranks(F.normalize(x, dim=1), labels, best_limit=4)
    assert result.ranks[0, 0].item() == 1  # item 2 (distance 0) comes before item 1
    assert result.ranks[2, 0].item() == 2  # items 0 (distance 0) and 1 come before 3 and 4
    metrics = evaluate_embeddings(x, labels, ks=(1,), compute_nmi=False)
    assert metrics["R@1"] == pytest.approx(100 * 3 / 5)


def test_half_precision_and_engine_choice(monkeypatch):
    x, labels = clustered_data()
    half = x.half()
    ours = evaluate_embeddings(half, labels, (1, 4), compute_nmi=False)
    search = evaluate_embeddings(half, labels, (1, 4), compute_nmi=False, engine="search")
    assert ours == search
    # engine="auto" uses the rank engine unless faiss is asked for explicitly.
    calls = []
    real = evaluate_module.positive_ranks
    monkeypatch.setattr(evaluate_module, "positive_ranks", lambda *a, **k: calls.append(1) or real(*a, **k))
    evaluate_embeddings(x, labels, (1,), compute_nmi=False)
    evaluate_embeddings(x, labels, (1,), compute_nmi=False, backend="torch")
    assert len(calls) == 2
    if faiss_available():
        evaluate_embeddings(x, labels, (1,), compute_nmi=False, backend="faiss")
        assert len(calls) == 2


def test_without_faiss(monkeypatch):
    monkeypatch.setattr(search_module, "faiss", None)
    monkeypatch.setattr(metrics_module, "faiss", None)
    x, labels = clustered_data()
    metrics = evaluate_embeddings(x, labels, (1, 2), seed=0)
    assert set(metrics) == {"R@1", "R@2", "MAP@R", "R-precision", "NMI"}
    with pytest.raises(ImportError, match="faiss"):
        evaluate_embeddings(x, labels, (1,), backend="faiss")


def test_band_is_exercised():
    # With large norms the error bound is wide: many items fall in the uncertainty band, the
    # band buffer is flushed several times (a tiny buffer limit), and many are resolved exactly.
    x = offset_data()
    labels = labels_for(len(x), "few")
    flushes, resolved = [], []
    real_flush = ranks_module._State.flush_band
    real_init = ranks_module._State.__init__

    def counting_flush(self):
        flushes.append(self.band_size)
        real_flush(self)
        resolved.append(self.band_resolved)

    def small_limit(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.band_limit = 5

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ranks_module._State, "flush_band", counting_flush)
        mp.setattr(ranks_module._State, "__init__", small_limit)
        result = positive_ranks(x, labels, best_limit=10, tile=16)
    assert sum(flushes) > 50 and len(flushes) > 3 and resolved[-1] > 20
    expected = oracle_ranks(x, labels, x, labels, exclude_self=True)
    for q, ranks in enumerate(expected):
        r = len(ranks)
        want = [v if v < (max(10, r) if j == 0 else r) else RANK_BEYOND for j, v in enumerate(ranks)]
        assert result.ranks[q, :r].tolist() == want


# ---------------------------------------------------------------------------------------------
# Query / gallery mode


def query_gallery_data(seed=6):
    g = gen(seed)
    gallery_labels = torch.randint(0, 15, (80,), generator=g)
    query_labels = torch.randint(0, 18, (40,), generator=g)  # classes 15..17: no positive
    centres = torch.randn(18, 6, generator=g)
    gallery = centres[gallery_labels] + torch.randn(80, 6, generator=g)
    query = centres[query_labels] + torch.randn(40, 6, generator=g)
    query[:5] = gallery[10:15]  # exact copies of gallery items (distance 0)
    query[5] = gallery[3] = gallery[4]  # a tie at distance 0 between gallery items 3 and 4
    return query, query_labels, gallery, gallery_labels


@pytest.mark.parametrize("budget", [1e-4, 0.01, 256.0])
def test_query_gallery_matches_oracle(budget):
    query, ql, gallery, gl = query_gallery_data()
    ks = (1, 10, 20, 30, 40, 50)
    for normalize in (True, False):
        q = F.normalize(query, dim=1) if normalize else query
        g = F.normalize(gallery, dim=1) if normalize else gallery
        expected = oracle_metrics(q, ql, g, gl, ks, exclude_self=False)
        ours = evaluate_query_gallery(
            query,
            ql,
            gallery,
            gl,
            ks,
            normalize=normalize,
            compute_nmi=False,
            memory_budget_mb=budget,
        )
        assert list(ours) == [f"R@{k}" for k in ks] + ["MAP@R", "R-precision"]
        assert ours == pytest.approx(expected, abs=1e-9)
        search = evaluate_query_gallery(
            query,
            ql,
            gallery,
            gl,
            ks,
            normalize=normalize,
            compute_nmi=False,
            engine="search",
            backend="torch",
        )
        assert ours == search


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_gallery_search_backends_agree(backend):
    query, ql, gallery, gl = query_gallery_data(seed=7)
    ours = evaluate_query_gallery(query, ql, gallery, gl, (1, 5), compute_nmi=False)
    search = evaluate_query_gallery(query, ql, gallery, gl, (1, 5), compute_nmi=False, engine="search", backend=backend)
    assert ours == search


def test_query_gallery_ranks_and_nmi():
    query, ql, gallery, gl = query_gallery_data()
    result = positive_ranks(query, ql, gallery, gl, best_limit=50, tile=9)
    expected = oracle_ranks(query, ql, gallery, gl, exclude_self=False)
    for q, ranks in enumerate(expected):
        r = len(ranks)
        assert result.num_positives[q].item() == r
        want = [v if v < (max(50, r) if j == 0 else r) else RANK_BEYOND for j, v in enumerate(ranks)]
        assert result.ranks[q, :r].tolist() == want
    metrics = evaluate_query_gallery(query, ql, gallery, gl, (1,), seed=0)
    assert set(metrics) == {"R@1", "MAP@R", "R-precision", "NMI"}
    assert metrics["NMI"] == pytest.approx(metrics_module.nmi(F.normalize(query, dim=1), ql, seed=0))


def test_query_gallery_label_dtypes():
    query, ql, gallery, gl = query_gallery_data()
    reference = evaluate_query_gallery(query, ql, gallery, gl, (1, 5), compute_nmi=False)
    mixed = evaluate_query_gallery(query, ql.int(), gallery, gl.long(), (1, 5), compute_nmi=False)
    assert mixed == reference


def test_query_gallery_no_positive_at_all():
    query, gallery = torch.randn(4, 3), torch.randn(6, 3)
    metrics = evaluate_query_gallery(query, torch.arange(4), gallery, torch.arange(10, 16), (1, 6), compute_nmi=False)
    assert metrics["R@1"] == metrics["R@6"] == 0.0
    assert math.isnan(metrics["MAP@R"]) and math.isnan(metrics["R-precision"])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.randn(4, 3), torch.arange(4), torch.randn(5, 2), torch.arange(5)), {}, "differ"),
        ((torch.randn(4, 3), torch.arange(3), torch.randn(5, 3), torch.arange(5)), {}, "4 query"),
        (
            (torch.randn(4, 3), torch.arange(4), torch.randn(5, 3), torch.arange(5), (6,)),
            {},
            r"max\(ks\)=6 exceeds the 5 gallery",
        ),
        ((torch.randn(0, 3), torch.arange(0), torch.randn(5, 3), torch.arange(5)), {}, "empty"),
        (
            (torch.randn(4, 3), torch.arange(4), torch.randn(5, 3), torch.arange(5)),
            {"engine": "annoy"},
            "engine must be one of",
        ),
        ((torch.randn(4, 3), torch.arange(4), torch.randn(5, 3) * math.nan, torch.arange(5)), {}, "NaN or inf"),
    ],
)
def test_query_gallery_errors(args, kwargs, message):
    if len(args) == 4:
        args = (*args, (1,))
    with pytest.raises(ValueError, match=message):
        evaluate_query_gallery(*args, **kwargs)


def test_engine_errors():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="engine must be one of"):
        evaluate_embeddings(x, torch.arange(6) // 2, (1,), engine="exact")
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_embeddings(x, torch.arange(6) // 2, (1,), backend="annoy")
    with pytest.raises(ValueError, match="memory_budget_mb"):
        evaluate_embeddings(x, torch.arange(6) // 2, (1,), memory_budget_mb=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, labels = clustered_data()
    cpu = evaluate_embeddings(x, labels, (1, 2, 4), compute_nmi=False)
    gpu = evaluate_embeddings(x.cuda(), labels, (1, 2, 4), compute_nmi=False)
    assert cpu == gpu
    query, ql, gallery, gl = query_gallery_data()
    cpu = evaluate_query_gallery(query, ql, gallery, gl, (1, 10), compute_nmi=False)
    gpu = evaluate_query_gallery(query.cuda(), ql, gallery.cuda(), gl, (1, 10), compute_nmi=False)
    assert cpu == gpu

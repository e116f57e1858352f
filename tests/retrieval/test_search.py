"""knn_search against a brute-force oracle: random data, exact duplicates, heavy ties."""

import pytest
import torch
from oracle import brute_force_knn

from plm_lightning.retrieval import faiss_available, knn_search
from plm_lightning.retrieval import search as search_module

BACKENDS = [
    pytest.param("faiss", marks=pytest.mark.skipif(not faiss_available(), reason="faiss not installed")),
    "torch",
]


def random_data(n=120, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def duplicate_data(seed=1):
    # 60 distinct rows plus 25 exact copies, shuffled: copies land both before and after originals.
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(60, 5, generator=gen)
    x = torch.cat([base, base[:25]])
    return x[torch.randperm(len(x), generator=gen)]


def grid_data(n=150, d=3, seed=2):
    # Integer points on a 3^3 grid: ~5.5 copies of each point and integer distances -> many
    # exact ties, at every k boundary.
    return torch.randint(0, 3, (n, d), generator=torch.Generator().manual_seed(seed)).float()


def offset_data(seed=3):
    # Tiny spread around a large offset: the float32 expansion |q|^2 + |g|^2 - 2 q.g cancels
    # catastrophically, so candidate distances are useless and certification must fall back.
    return 1000.0 + 0.01 * torch.randn(80, 4, generator=torch.Generator().manual_seed(seed))


DATASETS = {
    "random": random_data,
    "duplicates": duplicate_data,
    "grid": grid_data,
    "offset": offset_data,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("k", [1, 4, 11, 30])
def test_same_set_matches_oracle(backend, name, k):
    x = DATASETS[name]()
    dist, idx = knn_search(x, x, k, exclude_self=True, backend=backend)
    ref_dist, ref_idx = brute_force_knn(x, x, k, exclude_self=True)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(dist, ref_dist)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_separate_query_set_matches_oracle(backend, name):
    gallery = DATASETS[name]()
    query = torch.cat([gallery[:7], gallery[-5:] + 0.5])  # some queries coincide with items
    dist, idx = knn_search(query, gallery, 9, backend=backend)
    ref_dist, ref_idx = brute_force_knn(query, gallery, 9)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(dist, ref_dist)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_removed_by_index_not_rank(backend):
    x = duplicate_data()
    n = len(x)
    _, idx = knn_search(x, x, 3, exclude_self=True, backend=backend)
    for i in range(n):
        assert i not in idx[i].tolist()
        copies = [j for j in range(n) if j != i and torch.equal(x[j], x[i])]
        if copies:
            # The lowest-index copy comes first, whether it is before or after i.
            assert idx[i, 0].item() == min(copies)
    # The fixture really has copies on both sides of their originals.
    firsts = [(i, idx[i, 0].item()) for i in range(n) if torch.equal(x[idx[i, 0]], x[i])]
    assert any(j < i for i, j in firsts) and any(j > i for i, j in firsts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_identical_points_tie_by_index(backend):
    x = torch.zeros(40, 4)
    dist, idx = knn_search(x, x, 39, exclude_self=True, backend=backend)
    for i in range(40):
        assert idx[i].tolist() == [j for j in range(40) if j != i]
    assert torch.equal(dist, torch.zeros(40, 39))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["grid", "duplicates"])
def test_tiny_memory_budget_forces_many_chunks(backend, name):
    x = DATASETS[name]()
    dist, idx = knn_search(x, x, 12, exclude_self=True, backend=backend, memory_budget_mb=1e-6)
    ref_dist, ref_idx = brute_force_knn(x, x, 12, exclude_self=True)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(dist, ref_dist)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_faiss_and_torch_identical(name):
    x = DATASETS[name]()
    d_faiss, i_faiss = knn_search(x, x, 20, exclude_self=True, backend="faiss")
    d_torch, i_torch = knn_search(x, x, 20, exclude_self=True, backend="torch")
    assert torch.equal(i_faiss, i_torch)
    assert torch.equal(d_faiss, d_torch)


def test_output_types_and_input_casting():
    x = random_data(n=50, d=6)
    dist, idx = knn_search(x.double(), x.double(), 5, exclude_self=True, backend="torch")
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    assert dist.device.type == "cpu" and idx.device.type == "cpu"
    assert dist.shape == idx.shape == (50, 5)
    # Rows are sorted by (distance, index).
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())
    # Half precision is cast to float32 first: same result as searching the float32 cast.
    half = x.half()
    _, idx_half = knn_search(half, half, 5, exclude_self=True, backend="torch")
    _, ref_idx = brute_force_knn(half.float(), half.float(), 5, exclude_self=True)
    assert torch.equal(idx_half, ref_idx)


def test_distances_are_squared_euclidean():
    x = random_data(n=40, d=5)
    dist, idx = knn_search(x, x, 3, exclude_self=True, backend="torch")
    expected = ((x[:, None, :].double() - x[idx].double()) ** 2).sum(-1)
    torch.testing.assert_close(dist.double(), expected, rtol=1e-6, atol=1e-6)


def test_k_equal_to_gallery_size():
    x = grid_data(n=30)
    _, idx = knn_search(x, x, 29, exclude_self=True, backend="torch")
    _, ref_idx = brute_force_knn(x, x, 29, exclude_self=True)
    assert torch.equal(idx, ref_idx)
    _, idx = knn_search(x[:3], x, 30, backend="torch")
    assert sorted(idx[0].tolist()) == list(range(30))


def test_auto_backend_without_faiss(monkeypatch):
    monkeypatch.setattr(search_module, "faiss", None)
    assert not faiss_available()
    x = grid_data(n=40)
    _, idx = knn_search(x, x, 5, exclude_self=True)  # "auto" falls back to torch
    assert torch.equal(idx, brute_force_knn(x, x, 5, exclude_self=True)[1])
    with pytest.raises(ImportError, match="faiss is not installed"):
        knn_search(x, x, 5, backend="faiss")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torch_backend_matches_cpu():
    x = grid_data()
    cpu = knn_search(x, x, 10, exclude_self=True, backend="torch")
    gpu = knn_search(x.cuda(), x.cuda(), 10, exclude_self=True, backend="torch")
    assert torch.equal(cpu[1], gpu[1]) and torch.equal(cpu[0], gpu[0])
    assert gpu[1].device.type == "cpu"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k=10, exclude_self=True), r"k=10 exceeds the 9 gallery items.*itself excluded"),
        (dict(k=11), r"k=11 exceeds the 10 gallery items"),
        (dict(k=0), "positive integer"),
        (dict(k=2, backend="annoy"), "backend must be one of"),
        (dict(k=2, memory_budget_mb=0), "memory_budget_mb"),
    ],
)
def test_bad_arguments(kwargs, message):
    x = random_data(n=10, d=3)
    with pytest.raises(ValueError, match=message):
        knn_search(x, x, **kwargs)


def test_bad_inputs():
    x = random_data(n=10, d=3)
    with pytest.raises(ValueError, match="dimensions differ"):
        knn_search(x, torch.randn(10, 4), 2)
    with pytest.raises(ValueError, match="2-D"):
        knn_search(x[0], x, 2)
    with pytest.raises(ValueError, match="same set"):
        knn_search(x[:5], x, 2, exclude_self=True)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        knn_search(bad, x, 2)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        knn_search(x, bad, 2)

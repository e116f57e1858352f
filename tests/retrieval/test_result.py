"""RetrievalResult: what one evaluation of a split computed, and the split's ranking under its protocol (the one
the run's retrieval grid shows), against the brute-force oracle."""

import numpy as np
import torch
import torch.nn.functional as F
from oracle import orderings

from plm_lightning.retrieval import evaluate_embeddings, evaluate_split


def _split(n=30, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.arange(n) % 6


def test_the_result_holds_the_metrics_and_what_they_came_from():
    x, labels = _split()
    result = evaluate_split(x, labels, [1, 2], compute_nmi=False)
    assert result.metrics == evaluate_embeddings(x, labels, [1, 2], compute_nmi=False)
    assert torch.equal(result.embeddings, x) and torch.equal(result.labels, labels) and result.query_mask is None
    assert result.metric == "inner_product"


def test_same_set_search_ranks_every_other_item_as_the_metrics_do():
    x, labels = _split()
    result = evaluate_split(x, labels, [1], compute_nmi=False)
    queries = [0, 7, 29]
    scores, ids = result.search(queries, 5)
    unit = F.normalize(x, dim=1)
    expected = [orderings(unit, unit, exclude_self=True)[q][:5] for q in queries]
    assert ids.tolist() == expected
    cosine = (unit[queries][:, None, :] * unit[torch.as_tensor(ids)]).sum(-1).numpy()
    assert np.allclose(scores, cosine, atol=1e-5)  # cosine similarities, best first
    assert all(q not in row for q, row in zip(queries, ids.tolist()))


def test_query_gallery_search_returns_gallery_items_by_dataset_index():
    x, labels = _split()
    query = torch.arange(30) % 3 == 0
    result = evaluate_split(x, labels, [1], query_mask=query.numpy(), normalize=False, compute_nmi=False)
    assert result.metric == "l2" and torch.equal(result.query_mask, query)
    gallery = torch.nonzero(~query).flatten()
    scores, ids = result.search([0, 3], 4)
    expected = [[int(gallery[j]) for j in row[:4]] for row in orderings(x[[0, 3]], x[gallery])]
    assert ids.tolist() == expected and not query[torch.as_tensor(ids)].any()
    distances = torch.stack([(x[q] - x[torch.as_tensor(row)]).norm(dim=1) for q, row in zip([0, 3], ids)]).numpy()
    assert np.allclose(scores, distances, atol=1e-5)


def test_ties_go_to_the_smaller_index_and_the_query_is_never_its_own_result():
    emb = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0.1]])
    result = evaluate_split(emb, torch.tensor([0, 0, 1, 1]), [1], compute_nmi=False)
    _, ids = result.search([0, 1], 2)
    assert ids.tolist() == [[1, 3], [0, 3]]  # the duplicate comes first, never the query itself


def test_fewer_candidates_than_k_are_padded():
    emb = torch.eye(3)
    result = evaluate_split(emb, torch.tensor([0, 1, 2]), [1], compute_nmi=False)
    scores, ids = result.search([0], 5)
    assert ids[0, :2].tolist() == [1, 2] and (ids[0, 2:] == -1).all() and np.isnan(scores[0, 2:]).all()

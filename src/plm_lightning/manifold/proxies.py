"""The proxy manifold: N_rho learnable points, each with its own learnable linear piece (docs/method.md, "Proxies").

Proxies live in the (L2-normalised) teacher embedding space and are "treated like data embeddings". Their pieces
are stored as unconstrained d x m parameters and orthonormalised (Cholesky QR, pieces.orthonormal_basis) in
every forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from plm_lightning.manifold.pieces import local_pca_basis, orthonormal_basis


class ProxyManifold(nn.Module):
    initialized: torch.Tensor  # a registered buffer (bool scalar)

    def __init__(self, num_proxies: int, dim: int, piece_dim: int):
        super().__init__()
        self.num_proxies = num_proxies
        self.piece_dim = min(piece_dim, dim)
        self.points = nn.Parameter(torch.zeros(num_proxies, dim))
        # Placeholder bases until initialise_ runs; any full-rank matrix can be orthonormalised.
        raw = torch.zeros(num_proxies, dim, self.piece_dim)
        raw[:, : self.piece_dim, :] = torch.eye(self.piece_dim)
        self.raw_bases = nn.Parameter(raw)
        # A buffer, so that it travels with checkpoints and a resumed run does not re-initialise.
        self.register_buffer("initialized", torch.tensor(False))

    def __len__(self) -> int:
        return self.num_proxies

    def bases(self, dtype: torch.dtype | None = None, passes: int = 2) -> torch.Tensor:
        """Orthonormal pieces, K x d x m (differentiable), orthonormalised in ``dtype`` (default: the parameters')
        with ``passes`` Cholesky QR passes (pieces.orthonormal_basis)."""
        return orthonormal_basis(self.raw_bases if dtype is None else self.raw_bases.to(dtype), passes=passes)

    @torch.no_grad()
    def initialise_random_(self, generator: torch.Generator) -> None:
        """Ablation of the data initialisation: uniform random unit locations and random orthonormal pieces."""
        points = torch.randn(self.points.shape, generator=generator, dtype=torch.float64)
        self.points.copy_(torch.nn.functional.normalize(points, dim=1).to(self.points))
        raw = torch.randn(self.raw_bases.shape, generator=generator, dtype=torch.float64)
        self.raw_bases.copy_(orthonormal_basis(raw).to(self.raw_bases))
        self.initialized.fill_(True)

    @torch.no_grad()
    def initialise_(self, embeddings: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator) -> None:
        """Locations = embeddings of random training images; pieces = local PCA of their nearest neighbours.

        embeddings: N x d teacher embeddings of the training split; neighbours: N x k neighbour table whose first
        column is the point itself. ``generator`` must be seeded identically on every rank.
        """
        n = embeddings.shape[0]
        if self.num_proxies > n:
            raise ValueError(f"method.proxies.count={self.num_proxies} exceeds the {n} training images")
        chosen = torch.randperm(n, generator=generator)[: self.num_proxies].to(embeddings.device)
        self.points.copy_(embeddings[chosen].to(self.points))
        basis = local_pca_basis(embeddings, neighbours[chosen], self.piece_dim, generator=generator)
        self.raw_bases.copy_(basis.to(self.raw_bases))
        self.initialized.fill_(True)

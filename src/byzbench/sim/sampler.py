"""Per-client mini-batch sampling, vectorised over clients.

Each client walks through a random permutation of its own partition, B samples per
round (an epoch of ⌊|D_i|/B⌋ batches, the leftover dropped as with ``drop_last``), and
reshuffles when its epoch ends. A client holding fewer than B samples sends a batch of
all its samples repeated cyclically to length B. Every draw comes from one generator.
"""

from __future__ import annotations

import numpy as np
import torch


class ClientSampler:
    """Yields the ``[n·B]`` global sample indices of each round, client-major."""

    def __init__(self, parts: list[np.ndarray], batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch = len(parts), batch_size
        self.sizes = torch.tensor([len(p) for p in parts], dtype=torch.int64)
        width = int(self.sizes.max())
        self.index = torch.zeros(self.n, width, dtype=torch.int64)
        for i, p in enumerate(parts):
            self.index[i, : len(p)] = torch.as_tensor(p, dtype=torch.int64)
        self.per_epoch = torch.clamp(self.sizes // batch_size, min=1)
        self.generator = generator
        self.order = torch.empty(self.n, width, dtype=torch.int64)
        self._pad = torch.arange(width).unsqueeze(0) >= self.sizes.unsqueeze(1)
        self._offsets = torch.arange(batch_size)
        self.step = 0

    def _reshuffle(self, rows: torch.Tensor) -> None:
        keys = torch.rand(int(rows.sum()), self.order.shape[1], generator=self.generator)
        keys.masked_fill_(self._pad[rows], 2.0)
        self.order[rows] = keys.argsort(dim=1)

    def next(self) -> torch.Tensor:
        within = self.step % self.per_epoch
        starts = within == 0
        if bool(starts.any()):
            self._reshuffle(starts)
        local = (within.unsqueeze(1) * self.batch + self._offsets) % self.sizes.unsqueeze(1)
        self.step += 1
        return self.index.gather(1, self.order.gather(1, local)).view(-1)

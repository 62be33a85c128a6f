"""Per-client mini-batch sampling, vectorised over clients.

Each client walks through a random permutation of its own partition, B samples per
round (an epoch of ⌊|D_i|/B⌋ batches, the leftover dropped as with ``drop_last``), and
reshuffles when its epoch ends. A client holding fewer than B samples sends a batch of
all its samples repeated cyclically to length B. Every draw comes from one generator.

The shuffles are drawn with torch (``torch.rand`` on the given generator) and ordered by
a stable argsort of those keys (ties, vanishingly rare, by position); the sort and the
per-round index arithmetic on these small arrays run in NumPy, whose calls cost about a
microsecond each against several for torch's dispatcher.
"""

from __future__ import annotations

import numpy as np
import torch


#: The bit pattern of float32 2.0: above every key in [0, 1), so padding sorts last.
_PAD_BITS = int(np.float32(2.0).view(np.int32))


class ClientSampler:
    """Yields the ``[n·B]`` global sample indices of each round, client-major."""

    def __init__(self, parts: list[np.ndarray], batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch = len(parts), batch_size
        self.sizes = np.array([len(p) for p in parts], dtype=np.int64)
        width = int(self.sizes.max())
        self.index = np.zeros((self.n, width), dtype=np.int64)
        for i, p in enumerate(parts):
            self.index[i, : len(p)] = p
        self.per_epoch = np.maximum(self.sizes // batch_size, 1)
        self.generator = generator
        #: Row i: client i's current epoch, as global sample indices (its shuffled partition).
        self.epoch = np.zeros((self.n, width), dtype=np.int64)
        self._pad = np.arange(width)[None, :] >= self.sizes[:, None]
        self._columns = np.arange(width, dtype=np.int64)
        self._offsets = np.arange(batch_size)
        self.step = 0

    def _reshuffle(self, rows: np.ndarray) -> None:
        """New epochs for the clients ``rows``: their partitions in the order of keys
        u ~ U[0, 1) (padding last), i.e. the stable argsort of u.

        The sort runs on int64 words (bits of u) · 2³² + position: non-negative float32
        values order like their bit patterns, so sorting these distinct words is a stable
        argsort of u (several times faster than ``torch.argsort`` on such small rows).
        """
        keys = torch.rand(int(rows.sum()), self.epoch.shape[1], generator=self.generator).numpy()
        words = keys.view(np.int32).astype(np.int64)
        words[self._pad[rows]] = _PAD_BITS
        words <<= 32
        words |= self._columns
        words.sort(axis=1)
        order = words & 0xFFFFFFFF
        self.epoch[rows] = np.take_along_axis(self.index[rows], order, axis=1)

    def state(self) -> tuple[torch.Tensor, np.ndarray, int]:
        """A snapshot of everything `next` changes (generator state, current epochs, step)."""
        return self.generator.get_state(), self.epoch.copy(), self.step

    def restore(self, state: tuple[torch.Tensor, np.ndarray, int]) -> None:
        """Put back a `state` snapshot: the following draws repeat those after it."""
        gen_state, epoch, self.step = state
        self.generator.set_state(gen_state)
        self.epoch[...] = epoch

    def next(self) -> torch.Tensor:
        within = self.step % self.per_epoch
        starts = within == 0
        if starts.any():
            self._reshuffle(starts)
        local = (within[:, None] * self.batch + self._offsets) % self.sizes[:, None]
        self.step += 1
        return torch.from_numpy(np.take_along_axis(self.epoch, local, axis=1).reshape(-1))

"""Data: datasets (digits, synthetic, …) and partitioners (IID, Dirichlet, …) over clients."""

from __future__ import annotations

from byzbench.data.datasets import DATASETS, Dataset, ParamError, load_dataset
from byzbench.data.partition import PARTITIONERS, Partitioner, make_partitioner, partition

__all__ = [
    "DATASETS",
    "Dataset",
    "PARTITIONERS",
    "ParamError",
    "Partitioner",
    "load_dataset",
    "make_partitioner",
    "partition",
]

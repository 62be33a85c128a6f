"""Data: datasets (digits, synthetic, …) and partitioners (IID, Dirichlet, …) over clients."""

from __future__ import annotations

from byzbench.data.datasets import DATASETS, Dataset, ParamError, load_dataset
from byzbench.data.partition import PARTITIONERS, Partitioner, make_partitioner, partition

import byzbench.data.imagefolder  # noqa: E402,F401  (registers imagefolder)
import byzbench.data.partitioners_extra  # noqa: E402,F401  (registers longtail, shards, …)
import byzbench.data.vision  # noqa: E402,F401  (registers mnist, fashion_mnist, emnist, cifar10, svhn)
import byzbench.data.leaf  # noqa: E402,F401  (registers femnist)
from byzbench.data.files import DataFileError, MissingDataError, data_root, describe_files, fetch  # noqa: E402
from byzbench.data.describe import describe_partition, format_description, plot_label_matrix  # noqa: E402

__all__ = [
    "DATASETS",
    "Dataset",
    "PARTITIONERS",
    "DataFileError",
    "MissingDataError",
    "ParamError",
    "data_root",
    "describe_files",
    "fetch",
    "describe_partition",
    "format_description",
    "plot_label_matrix",
    "Partitioner",
    "load_dataset",
    "make_partitioner",
    "partition",
]

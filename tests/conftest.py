"""Shared test settings: deterministic, single-process torch."""

import torch

torch.set_num_threads(2)

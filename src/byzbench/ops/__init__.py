"""Vectorised numerical kernels shared by aggregators and attacks."""

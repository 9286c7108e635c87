"""Toy 2-D data with exact denoisers, for demos, tests and sampler benchmarks."""
from .gmm import GaussianMixture, gaussian_exact_solution, two_d_mixture

__all__ = ["GaussianMixture", "gaussian_exact_solution", "two_d_mixture"]

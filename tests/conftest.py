"""Shared test helpers: small deterministic models with non-trivial normalisation statistics."""

import os

import pytest
import torch

# Each xdist worker gets one thread: CI has 2 cores and runs 2 workers.
torch.set_num_threads(int(os.environ.get("SE_PLUGINS_TEST_THREADS", "1")))


def randomize_norm_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every norm layer non-trivial affine parameters and running statistics (like trained weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.ndim == 1 and "Norm" in type(m).__name__:
                    if name in ("weight", "running_var"):
                        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                    else:
                        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def rng_input():
    def make(*shape: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    return make

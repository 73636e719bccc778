"""Shared test helpers: small deterministic models with non-trivial normalisation statistics."""

import math
import os

import pytest
import torch

from se_plugins import se_modules

# Each xdist worker gets one thread: CI has 2 cores and runs 2 workers.
torch.set_num_threads(int(os.environ.get("SE_PLUGINS_TEST_THREADS", "1")))

# The suite on other CPUs' kernels (README, Set-up): with ATEN_CPU_CAPABILITY=default inductor's C++ code has no
# vector ISA, and torch 2.14's scalar codegen can emit a vectorized transpose that does not compile; this pins the
# compiled code's vector width (256: AVX2) while eager runs the scalar kernels.
if os.environ.get("SE_PLUGINS_TEST_INDUCTOR_SIMDLEN"):
    import torch._inductor.config

    torch._inductor.config.cpp.simdlen = int(os.environ["SE_PLUGINS_TEST_INDUCTOR_SIMDLEN"])


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


def rounding_tolerance(expected, *, layers: int, fan_in: int, dtype: torch.dtype = torch.float32) -> float:
    """Absolute bound on the difference of two computations of one function that differ only in float rounding.

    Each of ``layers`` layers may round differently on the two sides (other kernels, another summation order, a
    fused multiply-add): a relative error of about ``sqrt(fan_in) * eps`` for a sum of ``fan_in`` products
    (``fan_in = 1`` for an element-wise op). Normalised activations keep their size from layer to layer, so the
    errors add up along the depth: ``|a - b| <= layers * sqrt(fan_in) * eps(dtype) * max|expected|``. That is
    orders of magnitude below any real mistake (a wrong weight, a missing SE) and holds on every CPU.
    """
    tensors = expected if isinstance(expected, list | tuple) else [expected]
    scale = max(float(t.detach().abs().max()) for t in tensors)
    return layers * math.sqrt(fan_in) * torch.finfo(dtype).eps * max(scale, 1.0)


def same_ops_close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to 1e-5 relative to the output size: both sides run the same ops in the same order
    (scripted, traced or compiled against eager), so only an elementwise reassociation can differ."""
    return (actual - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def random_se(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with trained-like norms and the paper's random SE init, so SE changes its outputs."""
    randomize_norm_stats(model)
    for se in se_modules(model).values():
        se.reset_parameters("random")
    return model.eval()

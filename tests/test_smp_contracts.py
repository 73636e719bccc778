"""The checks smp's own suite applies to every encoder and model, applied to our SE encoders and SE U-Nets.

smp tests each encoder for forward/backward, ``in_channels``, ``depth`` (feature count, strides, ``out_channels``,
``output_stride``), dilation (``output_stride`` 8/16), and each model for scripting, ``torch.compile``,
``torch.export``, the hub mixin's save/load (tests/test_hub_roundtrip.py) and input sizes. Written here as our own
tests of the same contracts.
"""

import pytest
import segmentation_models_pytorch as smp
import torch

from se_plugins import add_se, has_se, se_modules
from se_plugins.segmentation import se_unet
from tests.conftest import random_se

ENCODERS = ["tu-se_plugin_resnet18", "tu-se_plugin_resnet50d"]
STRIDES = [1, 2, 4, 8, 16, 32]


def _encoder(name: str, **kwargs) -> torch.nn.Module:
    encoder = smp.encoders.get_encoder(name, weights=None, **kwargs)
    assert has_se(encoder)
    return encoder


def _native_se_encoder(**kwargs) -> torch.nn.Module:
    return add_se(smp.encoders.get_encoder("resnet18", weights=None, **kwargs), init="random")


def _strides(x: torch.Tensor, features: list[torch.Tensor]) -> list[int]:
    assert all(x.shape[-2] // f.shape[-2] == x.shape[-1] // f.shape[-1] for f in features)
    return [x.shape[-1] // f.shape[-1] for f in features]


@pytest.mark.parametrize("name", [*ENCODERS, "native"])
def test_encoder_forward_backward_in_channels(name, rng_input):
    for in_channels in (1, 3, 4):
        encoder = (
            _native_se_encoder(in_channels=in_channels) if name == "native" else _encoder(name, in_channels=in_channels)
        )
        features = encoder(rng_input(1, in_channels, 64, 64))
        assert len(features) == 6 and [f.shape[1] for f in features] == list(encoder.out_channels)
        features[-1].mean().backward()
        assert all(se.fc1.weight.grad is not None for se in se_modules(encoder).values())


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_depth(name, rng_input):
    x = rng_input(1, 3, 64, 64)
    for depth in (3, 4, 5):
        encoder = _encoder(name, depth=depth).eval()
        with torch.no_grad():
            features = encoder(x)
        assert len(features) == len(encoder.out_channels) == depth + 1
        assert _strides(x, features) == STRIDES[: depth + 1]
        assert encoder.output_stride == STRIDES[depth]


@pytest.mark.parametrize("name", [*ENCODERS, "native"])
def test_encoder_dilated(name, rng_input):
    x = rng_input(1, 3, 64, 64)
    for stride in (8, 16):
        encoder = _native_se_encoder(output_stride=stride) if name == "native" else _encoder(name, output_stride=stride)
        with torch.no_grad():
            features = encoder.eval()(x)
        assert _strides(x, features) == [min(stride, s) for s in STRIDES]


def _unet(encoder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return random_se(se_unet(encoder, 2, encoder_depth=4, decoder_channels=(64, 32, 16, 8), se_init="random"))


@pytest.mark.parametrize("encoder", ["resnet18", "tu-se_plugin_resnet18"])
def test_unet_any_input_resolution(encoder, rng_input):
    model = _unet(encoder)
    assert not model.requires_divisible_input_shape  # smp's U-Net takes any size (the decoder interpolates)
    with torch.no_grad():
        for h, w in ((64, 64), (96, 160), (65, 67), (70, 33)):
            assert model(rng_input(1, 3, h, w)).shape == (1, 2, h, w)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet18", "tu-se_plugin_resnet18"])
def test_unet_compile_and_export(encoder, rng_input):
    model = _unet(encoder)
    x = rng_input(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="eager")
        # compile and export trace the functional SE form: the same ops as eager up to op order
        assert (compiled(x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())
    exported = torch.export.export(model, (x,), strict=True)
    with torch.no_grad():
        assert (exported.module()(x) - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())

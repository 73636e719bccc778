"""ONNX: an SE classifier and an SE U-Net export with both torch.onnx exporters and run in onnxruntime.

The TorchScript-based exporter writes opset 17. The dynamo exporter writes opset 18, its own: asked for 17 it
converts down with onnx's version converter, which fails on ``ReduceMean`` for plain timm ResNets as well (seen
with torch 2.14 / onnx 1.23), and then keeps 18.
"""

import numpy as np
import pytest
import timm
import torch

from se_plugins.segmentation import se_unet
from tests.conftest import random_se

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

EXPORTERS = {"torchscript": dict(dynamo=False, opset_version=17), "dynamo": dict(dynamo=True, opset_version=18)}


def _export_and_run(model: torch.nn.Module, x: torch.Tensor, path, exporter: str) -> np.ndarray:
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["out"], **EXPORTERS[exporter])
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opsets = {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
    assert opsets == {EXPORTERS[exporter]["opset_version"]}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def _assert_matches(actual: np.ndarray, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(x).numpy()
    assert actual.shape == expected.shape
    # onnxruntime's kernels sum in another order than torch's: the 1e-4, relative to the output size
    assert np.abs(actual - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_se_classifier_runs_in_onnxruntime(exporter, tmp_path, rng_input):
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_resnet18", num_classes=5, se_init="random"))
    x = rng_input(2, 3, 64, 64)
    _assert_matches(_export_and_run(model, x, tmp_path / "classifier.onnx", exporter), model, x)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_se_unet_runs_in_onnxruntime(exporter, tmp_path, rng_input):
    torch.manual_seed(0)
    model = random_se(se_unet("resnet18", 3, encoder_depth=4, decoder_channels=(64, 32, 16, 8), se_init="random"))
    x = rng_input(1, 3, 64, 64)
    _assert_matches(_export_and_run(model, x, tmp_path / "unet.onnx", exporter), model, x)

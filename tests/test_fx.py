"""FX: SE models trace with autograd on and off, and the traced graphs compute what the eager models do.

timm's ``test_model_forward_fx`` traces under ``torch.no_grad()``, torchvision's ``create_feature_extractor`` and
timm's ``features_only=True, feature_cls="fx"`` trace the model's forward. The traced graph must be the
functional SE form (never the in-place one used in eager without autograd), so it stays valid with grad on.
"""

import pytest
import timm
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from se_plugins import SE_POSITIONS, add_se
from tests.conftest import random_se, same_ops_close


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("name", ["se_plugin_resnet18", "se_plugin_resnet26d"])
def test_symbolic_trace_matches_eager(name, grad, rng_input):
    torch.manual_seed(0)
    model = random_se(timm.create_model(name, num_classes=5, se_init="random"))
    x = rng_input(2, 3, 64, 64)
    with torch.set_grad_enabled(grad):
        graph = torch.fx.symbolic_trace(model)
    assert not any(n.kwargs.get("out") is not None for n in graph.graph.nodes)  # no in-place form recorded
    for run_grad in (True, False):  # a graph traced either way runs either way
        with torch.set_grad_enabled(run_grad):
            assert same_ops_close(graph(x), model(x))
    graph(x).sum().backward()  # and it trains: autograd through the traced SE
    assert all(p.grad is not None for n, p in graph.named_parameters() if ".se." in n)


@pytest.mark.parametrize("position", SE_POSITIONS)
def test_symbolic_trace_every_position(position, rng_input):
    torch.manual_seed(0)
    model = random_se(add_se(torchvision.models.resnet18(num_classes=5), position=position, init="random"))
    x = rng_input(1, 3, 64, 64)
    with torch.no_grad():
        graph = torch.fx.symbolic_trace(model)
        assert same_ops_close(graph(x), model(x))


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_torchvision_create_feature_extractor(grad, rng_input):
    torch.manual_seed(0)
    model = random_se(add_se(torchvision.models.resnet50(), init="random"))
    x = rng_input(1, 3, 64, 64)
    nodes = {"layer1": "c2", "layer2": "c3", "layer4": "c5"}
    with torch.set_grad_enabled(grad):
        extractor = create_feature_extractor(model, return_nodes=nodes)
        features = extractor(x)
        expected = {"c2": model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))}
    assert set(features) == {"c2", "c3", "c5"}
    assert same_ops_close(features["c2"], expected["c2"])
    with torch.no_grad():
        assert same_ops_close(extractor(x)["c5"], create_feature_extractor(model, return_nodes=nodes)(x)["c5"])


def test_timm_fx_features_have_se_and_match_hook_features(rng_input):
    torch.manual_seed(0)
    fx = timm.create_model("se_plugin_resnet18", features_only=True, feature_cls="fx", se_init="random")
    listed = random_se(timm.create_model("se_plugin_resnet18", features_only=True, se_init="random"))
    # the FX graph inlines the SE forward: its SE parameters are there (traced before wrapping)
    assert sum(".se.fc1.weight" in k for k in fx.state_dict()) == 8
    fx.load_state_dict({f"graph_module.{k}": v for k, v in listed.state_dict().items()})
    x = rng_input(1, 3, 64, 64)
    for train in (False, True):
        fx.train(train)
        listed.train(train)
        with torch.no_grad():
            for a, b in zip(fx(x), listed(x), strict=True):
                assert same_ops_close(a, b)

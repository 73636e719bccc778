"""SE in DenseNet (timm ``se_plugin_densenet*`` twins, ``add_se`` on timm's, torchvision's and smp's DenseNets).

SE sits on each dense layer's output, the ``growth_rate`` new feature maps, before the dense block concatenates them
(the SE paper's rule for modules without a residual add: on the module's output before aggregation).
"""

import copy

import pytest
import timm
import torch
import torchvision
from timm.layers import make_divisible
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, has_se, se_modules
from se_plugins.models import densenet as se_densenet
from se_plugins.segmentation import se_unet
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    SE_KEYS,
    assert_features_match_base,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    pretrained_from_base,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

# a small DenseNet of the same code (growth 8, two layers per block, a 16-channel stem), for the tests that run it
TINY = dict(growth_rate=8, block_config=(2, 2, 2, 2), bn_size=2)
TINY_TV = dict(TINY, num_init_features=16)  # timm's stem is 2 x growth_rate


def _models():
    return {
        "timm": lambda: timm.create_model("densenet121", num_classes=5, **TINY),
        "torchvision": lambda: torchvision.models.DenseNet(num_classes=5, **TINY_TV),
    }


def test_registry_and_model_args_match_timm():
    names = timm.list_models("se_plugin_densenet*")
    assert names == [f"se_plugin_{b}" for b in timm.list_models("densenet*")] and len(names) == 6
    assert set(names) <= set(timm.list_models(module="densenet"))
    assert se_densenet.base_architectures() == timm.list_models("densenet*")
    # the twins' builds are timm's entrypoints', shape for shape: plain, deep stem + blur pool, growth 48
    for variant in ("densenet121", "densenetblur121d", "densenet161"):
        with torch.device("meta"):
            ours, timms = se_densenet.base_entrypoint(variant)(), timm.create_model(variant)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in timms.state_dict().items()
        }, variant
        assert [type(m) for m in ours.modules()] == [type(m) for m in timms.modules()], variant


def test_parameter_count_from_widths():
    """densenet121: 6 + 12 + 24 + 16 dense layers, each SE on growth_rate = 32 channels."""
    layers, growth = 6 + 12 + 24 + 16, 32
    hidden = make_divisible(growth / 16, 8, round_limit=0.0)  # 8: timm's minimum width
    expected = layers * (2 * growth * hidden + hidden + growth)
    with torch.device("meta"):
        base, ours = timm.create_model("densenet121"), timm.create_model("se_plugin_densenet121")
        tv = add_se(torchvision.models.densenet121())
    assert expected == 32_016 and count_params(ours) - count_params(base) == expected
    assert count_params(base) == 7_978_856
    assert count_params(tv) == count_params(ours)
    assert {(se.channels, se.hidden_channels) for se in se_modules(ours).values()} == {(32, 8)}


@pytest.mark.parametrize("kind", list(_models()))
def test_identity_init_keeps_outputs_and_keys(kind):
    torch.manual_seed(0)
    model = randomize_norm_stats(_models()[kind]()).eval()
    # position=None: the family's own, "post"; gate exactly 1: x * 1 == x
    state, before_state = assert_identity_init(model, batch())
    assert {k for k in state if k not in before_state} == {
        f"features.denseblock{b}.denselayer{i}.se.{p}" for b in (1, 2, 3, 4) for i in (1, 2) for p in SE_KEYS
    }


@pytest.mark.parametrize("kind", list(_models()))
def test_se_scales_the_new_features_before_the_concatenation(kind):
    torch.manual_seed(0)
    model = random_se(add_se(_models()[kind](), init="random"))
    block = model.features.denseblock2
    act = nn.ReLU()
    x = torch.randn(1, block.denselayer1.norm1.num_features, 8, 8)

    def layer_by_hand(layer, inputs):
        y = torch.cat(inputs, 1)
        y = layer.conv1(layer.norm1(y) if kind == "timm" else act(layer.norm1(y)))  # timm's norms carry the ReLU
        return layer.se(layer.conv2(layer.norm2(y) if kind == "timm" else act(layer.norm2(y))))

    with torch.no_grad():
        new1 = layer_by_hand(block.denselayer1, [x])
        new2 = layer_by_hand(block.denselayer2, [x, new1])
        torch.testing.assert_close(block(x), torch.cat([x, new1, new2], 1), rtol=0, atol=0)
        gate = block.denselayer1.se.gate(block.denselayer1.block_forward(x))
        assert gate.shape == (1, 8, 1, 1) and not torch.allclose(gate, torch.ones_like(gate))


def test_options_and_errors():
    model = timm.create_model("se_plugin_densenet121", se_stages=(2, 4), se_reduction=2, **TINY)
    assert sorted(se_modules(model)) == [f"features.denseblock{b}.denselayer{i}.se" for b in (2, 4) for i in (1, 2)]
    assert model.features.denseblock2.denselayer1.se.hidden_channels == make_divisible(8 / 2, 8, round_limit=0.0)
    tv = add_se(torchvision.models.DenseNet(**TINY_TV), stages=(1,))
    assert sorted(se_modules(tv)) == ["features.denseblock1.denselayer1.se", "features.denseblock1.denselayer2.se"]
    with pytest.raises(ValueError, match=r"position 'standard' is not supported by timm DenseNet .*\('post',\)"):
        add_se(timm.create_model("densenet121", **TINY), position="standard")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(torchvision.models.DenseNet(**TINY_TV), stages=(5,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(add_se(torchvision.models.DenseNet(**TINY_TV)))


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base("densenet121", tmp_path, **TINY)
    state, ours_state = torch.load(tmp_path / "base.pth", weights_only=True), ours.state_dict()
    assert {k for k in ours_state if k not in state} == {
        f"features.denseblock{b}.denselayer{i}.se.{p}" for b in (1, 2, 3, 4) for i in (1, 2) for p in SE_KEYS
    }
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert torch.equal(ours(batch()), base(batch()))
        assert_features_match_base("densenet121", [2, 4, 8, 16, 32], se_count=8, **kwargs)
        assert_intermediates_match(ours, base, batch())
    # a fine-tuned twin's own checkpoint (SE keys included) loads back through the same mechanism
    torch.save(random_se(ours).state_dict(), tmp_path / "twin.pth")
    again = timm.create_model("se_plugin_densenet121", pretrained=True, **TINY,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "twin.pth"))).eval()  # fmt: skip
    with torch.no_grad():
        assert torch.equal(again(batch()), ours(batch()))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "timm_features", "torchvision"])
def test_torchscript_and_fx_match_eager(kind):
    torch.manual_seed(0)
    build = {
        **_models(),
        "timm_features": lambda: timm.create_model("se_plugin_densenet121", features_only=True, **TINY),
    }[kind]
    model = random_se(add_se(build(), init="random") if kind != "timm_features" else build())
    assert_scripted_matches(model, batch())
    if kind == "timm_features":
        return
    fx_matches_eager(model, batch())


@pytest.mark.parametrize("kind", list(_models()))
def test_memory_efficient_checkpointing_trains_the_same(kind):
    """torchvision's memory_efficient / timm's grad_checkpointing recompute the bottleneck: same gradients."""
    torch.manual_seed(0)
    plain = random_se(add_se(_models()[kind](), init="random")).train()
    efficient = copy.deepcopy(plain)
    for m in efficient.modules():
        if hasattr(m, "memory_efficient"):
            m.memory_efficient = True
        if hasattr(m, "grad_checkpointing") and hasattr(m, "bottleneck_fn"):
            m.grad_checkpointing = True
    for model in (plain, efficient):
        model(batch()).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        assert same_ops_close(b.grad, a.grad), name


def test_export_matches_eager():
    model = random_se(timm.create_model("se_plugin_densenet121", num_classes=5, se_init="random", **TINY))
    exported = torch.export.export(model, (batch(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(batch()), model(batch()))


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step("se_plugin_densenet121", 8, backbone_kwargs=TINY)
    unet = unet_trains_one_step("tu-se_plugin_densenet121", 58)
    assert list(unet.encoder.out_channels) == [3, 64, 256, 512, 1024, 1024]
    # smp's own DenseNet encoders are torchvision's DenseNet
    native = se_unet("densenet121", 2, se_decoder=False)
    assert (
        len(se_modules(native)) == 58
        and "encoder.features.denseblock1.denselayer1.se.fc1.weight" in native.state_dict()
    )
    assert has_se(native.encoder)

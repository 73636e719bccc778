"""SE in timm's pre-activation ResNet-V2 (and BiT): ``se_plugin_resnetv2_*``, SE at the branch end, before the add."""

import copy

import pytest
import timm
import torch

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules, set_se_fused
from tests.conftest import random_se, randomize_norm_stats, rounding_tolerance, same_ops_close
from tests.family_checks import (
    assert_features_match_base,
    assert_identity_init,
    batch,
    compile_matches_eager,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    pretrained_from_base,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

ARCH = "resnetv2_18"


def test_registry_and_parameter_counts():
    names = timm.list_models("se_plugin_resnetv2_*")
    assert names == [f"se_plugin_{b}" for b in timm.list_models("resnetv2_*")] and len(names) == 20
    assert set(names) <= set(timm.list_models(module="resnetv2"))
    with torch.device("meta"):
        base, ours = timm.create_model("resnetv2_50"), timm.create_model("se_plugin_resnetv2_50")
    assert count_params(base) == 25_549_352
    assert count_params(ours) - count_params(base) == 2_530_992  # ResNet-50's SE, same widths


@pytest.mark.parametrize("arch", [ARCH, "resnetv2_50d_gn"])
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    state, before_state = assert_identity_init(model, batch(), exact=False)
    assert all(".se." in k for k in set(state) - set(before_state))


@pytest.mark.parametrize("position", ["standard", "post"])
def test_positions_against_the_block_composed_by_hand(position):
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", se_position=position, se_init="random"))
    with torch.no_grad():
        for block in (model.stages[1].blocks[0], model.stages[1].blocks[1]):  # projection, then identity shortcut
            x = torch.randn(1, block.conv1.in_channels, 16, 16)
            pre = block.norm1(x)
            shortcut = block.downsample(pre) if block.downsample is not None else x
            branch = block.conv2(block.norm2(block.conv1(pre)))
            expected = (
                branch * block.se.gate(branch) + shortcut if position == "standard" else block.se(branch + shortcut)
            )
            torch.testing.assert_close(block(x), expected)


def test_fused_equals_plain_forward_and_backward():
    torch.manual_seed(0)
    fused = timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random")
    plain = set_se_fused(copy.deepcopy(fused), False)
    for model in (fused, plain):
        model.train()(batch()).square().mean().backward()
    with torch.no_grad():
        expected = plain.eval()(batch())
        # fusing only changes the rounding of the scale-and-add in each of the 8 blocks, carried through 18 layers
        assert (fused.eval()(batch()) - expected).abs().max().item() <= rounding_tolerance(
            expected, layers=18, fan_in=3 * 3 * 512
        )
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_options_and_errors():
    model = timm.create_model(f"se_plugin_{ARCH}", se_stages=(3, 4), se_reduction=8)
    assert sorted(se_modules(model)) == [f"stages.{s}.blocks.{b}.se" for s in (2, 3) for b in (0, 1)]
    assert model.stages[3].blocks[0].se.hidden_channels == 512 // 8
    with pytest.raises(ValueError, match=r"position 'pre' is not supported by timm ResNet-V2 PreActBasic"):
        add_se(timm.create_model(ARCH), position="pre")


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    with torch.no_grad():
        assert same_ops_close(ours(batch()), base(batch()))
        feats = assert_features_match_base(ARCH, [2, 4, 8, 16, 32], exact=False, **kwargs)
        assert feats.feature_info.channels() == [64, 64, 128, 256, 512]


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    x = batch()
    assert_scripted_matches(model, x)

    def functional_se_form(graph):
        assert not any(n.kwargs.get("out") is not None for n in graph.graph.nodes)

    fx_matches_eager(model, x, check_graph=functional_se_form)
    compile_matches_eager(model, x)


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 8)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 8)

"""SE in timm's Res2Net / Res2NeXt: ``se_plugin_res2net*`` twins, SE after ``Bottle2neck``'s bn3 (its ``se`` slot).

That is the Res2Net paper's SE-Res2Net: SE right before the residual add.
"""

import copy

import pytest
import timm
import torch
from timm.layers import make_divisible
from timm.models import res2net as timm_res2net
from timm.models.resnet import ResNet

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SE_POSITIONS, add_se, has_se, se_modules, set_se_fused
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    SE_KEYS,
    assert_features_match_base,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    count_params,
    detector_trains_one_step,
    fx_features_se_count,
    pretrained_from_base,
    script_fx_and_compile_match_eager,
    se_params,
    unet_trains_one_step,
)

ARCH = "res2net50_14w_8s"  # the smallest registered Res2Net


def _tiny(**block_args) -> torch.nn.Module:
    """A one-block-per-stage Res2NeXt built the way timm builds its archs (ResNet + Bottle2neck)."""
    return ResNet(block=timm_res2net.Bottle2neck, layers=(1, 1, 1, 1), base_width=4, cardinality=4,
                  block_args=dict(scale=4, **block_args), num_classes=5)  # fmt: skip


def test_registry_and_parameter_counts():
    bases = [n for n in timm.list_models(module="res2net") if not n.startswith("se_plugin_")]
    names = timm.list_models("se_plugin_res2ne*")
    assert sorted(names) == sorted(f"se_plugin_{b}" for b in bases) and len(names) == 9
    assert set(names) <= set(timm.list_models(module="res2net"))  # timm's module filter sees the twins
    with torch.device("meta"):
        base, ours = timm.create_model("res2net50_26w_4s"), timm.create_model("se_plugin_res2net50_26w_4s")
    # SE on each block's output channels (planes * 4), ResNet-50's stage depths
    expected = sum(n * se_params(c) for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048), strict=True))
    assert count_params(ours) - count_params(base) == expected == 2_530_992
    assert count_params(base) == 25_699_120


def test_identity_init_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = randomize_norm_stats(_tiny()).eval()
    # x * 1 == x: timm's own forward, gate exactly 1
    state, before_state = assert_identity_init(model, batch())
    assert set(state) - set(before_state) == {f"layer{s}.0.se.{k}" for s in range(1, 5) for k in SE_KEYS}


def test_se_sits_after_bn3_before_the_add():
    torch.manual_seed(0)
    model = set_se_fused(random_se(add_se(_tiny(), init="random")), False)  # the plain form calls se(out)
    block = model.layer2[0]  # strided, projection shortcut
    seen = {}
    block.bn3.register_forward_hook(lambda m, i, o: seen.update(bn3=o.clone()))
    block.se.register_forward_hook(lambda m, i, o: seen.update(se_in=i[0].clone(), se_out=o.clone()))
    x = torch.randn(1, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        out = block(x)
        assert torch.equal(seen["se_in"], seen["bn3"])
        torch.testing.assert_close(out, torch.relu(seen["se_out"] + block.downsample(x)), rtol=0, atol=0)
    assert (block.se.channels, block.se.hidden_channels) == (512, 32)


@pytest.mark.parametrize("position", SE_POSITIONS)
def test_every_position_starts_as_the_identity(position):
    torch.manual_seed(0)
    model = randomize_norm_stats(_tiny()).eval()
    assert_identity_init(model, batch(), position=position)


def test_fused_equals_plain():
    fused = random_se(add_se(_tiny(), init="random"))
    plain = set_se_fused(copy.deepcopy(fused), False)
    with torch.no_grad():
        assert same_ops_close(fused(batch()), plain(batch()))  # addcmul vs multiply-then-add: one rounding per block


def test_options_and_errors():
    model = add_se(_tiny(), stages=(3, 4), reduction=8)
    assert sorted(se_modules(model)) == ["layer3.0.se", "layer4.0.se"]
    assert model.layer3[0].se.hidden_channels == make_divisible(1024 / 8, 8)
    with pytest.raises(ValueError, match="already has SE"):
        add_se(add_se(_tiny()))
    with pytest.raises(ValueError, match="already has SE"):  # timm's own attention in the same slot
        add_se(_tiny(attn_layer=timm.layers.SEModule))


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    assert {k for k in ours.state_dict() if k.startswith("layer1.0.se.")} == {f"layer1.0.se.{k}" for k in SE_KEYS}
    x = batch()
    with torch.no_grad():
        assert same_ops_close(ours(x), base(x))
        assert_intermediates_match(ours, base, x, exact=False)
        assert_features_match_base(ARCH, [2, 4, 8, 16, 32], exact=False, x=x, se_count=16, **kwargs)


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(add_se(_tiny(), init="random"))
    x = batch()
    script_fx_and_compile_match_eager(model, x)
    assert fx_features_se_count(f"se_plugin_{ARCH}") == 16


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector = detector_trains_one_step(f"se_plugin_{ARCH}", 16)
    assert has_se(detector.backbone)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 16)

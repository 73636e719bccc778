"""SE in timm's Dual Path Networks: ``se_plugin_dpn*``, SE on the residual path's branch output before its add.

A dual path block's output is ``[x_s1 + out1, x_s2, out2]``: SE scales ``out1`` (the branch channels added to the
residual path); the dense path (``x_s2``, the new channels ``out2``) is carried on unscaled.
"""

import copy

import pytest
import timm
import torch
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules, set_se_fused
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

ARCH = "dpn48b"  # "b" blocks (separate 1x1 convs for the two paths)
ARCHS = [ARCH, "dpn68"]  # and the shared last 1x1 conv, split in two


def test_registry_and_parameter_counts():
    bases = [n for n in timm.list_models(module="dpn") if not n.startswith("se_plugin_")]
    names = timm.list_models("se_plugin_dpn*")
    assert sorted(names) == sorted(f"se_plugin_{b}" for b in bases) and len(names) == 7
    assert set(names) <= set(timm.list_models(module="dpn"))
    with torch.device("meta"):
        base, ours = timm.create_model("dpn68"), timm.create_model("se_plugin_dpn68")
    # dpn68: k_sec (3, 4, 12, 3) blocks, residual-path width num_1x1_c = 64 * 2**i (small: bw_factor 1)
    expected = sum(n * se_params(c) for n, c in zip((3, 4, 12, 3), (64, 128, 256, 512), strict=True))
    assert count_params(ours) - count_params(base) == expected == 213_528
    assert count_params(base) == 12_611_602


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    # timm's ops in timm's order, gates exactly 1
    state, before_state = assert_identity_init(model, batch())
    assert {k for k in state if k.startswith("features.conv3_1.se.")} == {f"features.conv3_1.se.{k}" for k in SE_KEYS}
    assert all(".se." in k for k in set(state) - set(before_state))


@pytest.mark.parametrize("arch", ARCHS)
def test_se_scales_only_the_residual_part(arch):
    torch.manual_seed(0)
    base = randomize_norm_stats(timm.create_model(arch)).eval()
    model = set_se_fused(random_se(add_se(copy.deepcopy(base), init="random")), False)
    for name in ("conv3_1", "conv3_2"):  # a projecting "down" block, then a "normal" one
        block, base_block = getattr(model.features, name), getattr(base.features, name)
        seen = {}
        block.se.register_forward_hook(lambda m, i, o, seen=seen: seen.update(se_in=i[0].clone(), se_out=o.clone()))
        last = block.c1x1_c1 if block.c1x1_c1 is not None else block.c1x1_c  # the conv that makes out1
        last.register_forward_hook(lambda m, i, o, seen=seen: seen.update(last=o.clone()))
        x = torch.randn(1, block.c1x1_a.bn.num_features, 16, 16)
        with torch.no_grad():
            out, ref = block(x), base_block(x)
            c = block.num_1x1_c
            x_s = block.c1x1_w_s2(x) if block.c1x1_w_s2 is not None else x
            assert torch.equal(seen["se_in"], seen["last"][:, :c])  # the branch's added part, out1
            torch.testing.assert_close(out[:, :c], x_s[:, :c] + seen["se_out"], rtol=0, atol=0)
            assert torch.equal(out[:, c:], ref[:, c:])  # the dense path is timm's, bit for bit
        assert block.se.channels == c == 128


def test_fused_equals_plain():
    torch.manual_seed(0)
    fused = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    plain = set_se_fused(copy.deepcopy(fused), False)
    with torch.no_grad():
        assert same_ops_close(fused(batch()), plain(batch()))  # addcmul vs multiply-then-add: one rounding per block


def test_options_and_errors():
    model = add_se(timm.create_model(ARCH), stages=(4,), reduction=8)
    assert sorted(se_modules(model)) == ["features.conv5_1.se", "features.conv5_2.se", "features.conv5_3.se"]
    assert model.features.conv5_1.se.hidden_channels == make_divisible(512 / 8, 8)
    with pytest.raises(ValueError, match=r"position 'post' is not supported by timm DPN DualPathBlock"):
        add_se(timm.create_model(ARCH), position="post")
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model(f"se_plugin_{ARCH}"))


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    x = batch()
    with torch.no_grad():
        assert torch.equal(ours(x), base(x))
        assert_intermediates_match(ours, base, x)
        assert_features_match_base(ARCH, [2, 4, 8, 16, 32], x=x, se_count=16, **kwargs)
        # timm's flattened feature wrapper names the blocks features_conv2_1 ...: the stages still come out
        assert sorted(se_modules(add_se(timm.create_model(ARCH, features_only=True), stages=(1,)))) == [
            "features_conv2_1.se", "features_conv2_2.se", "features_conv2_3.se"
        ]  # fmt: skip


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    x = batch()
    script_fx_and_compile_match_eager(model, x)
    assert fx_features_se_count(f"se_plugin_{ARCH}") == 16


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 16)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 16)

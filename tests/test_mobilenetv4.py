"""SE in the nets of timm's ``mobilenetv3`` module built without SE: MobileNetV4-Conv and MobileNetV3-Minimal.

MobileNetV4's ``UniversalInvertedResidual`` (UIB) has an SE slot after its middle depthwise conv, on the expanded
channels before the linear projection, where MobileNetV3 puts SE; the minimal MobileNetV3s are the efficientnet
builder's ``InvertedResidual``/``DepthwiseSeparableConv`` (tests/test_efficientnet_builder.py).
"""

import pytest
import timm
import torch
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, has_se, se_modules
from se_plugins.models import mobilenetv3 as se_mobilenetv3
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    assert_features_match_base,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    count_params,
    detector_trains_one_step,
    pretrained_from_base,
    script_fx_and_compile_match_eager,
    se_params,
    unet_trains_one_step,
)

REP = "mobilenetv4_conv_small"


def _model_meta(arch: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(arch)


def test_registry_has_exactly_the_archs_without_se_or_attention():
    """Every arch of timm's mobilenetv3 module whose SE slots are all empty and that has no attention block."""
    expected = []
    for arch in timm.list_models(module="mobilenetv3", exclude_filters=["se_plugin_*"]):
        model = _model_meta(arch)
        slots = [m.se for m in model.modules() if hasattr(m, "se")]
        attention = any("Attention" in type(m).__name__ for m in model.modules())
        if slots and all(isinstance(se, nn.Identity) for se in slots) and not attention:
            expected.append(arch)
    assert expected == sorted(se_mobilenetv3.BASES) and len(expected) == 10
    names = timm.list_models("se_plugin_*", module="mobilenetv3")
    assert names == [f"se_plugin_{b}" for b in expected]
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model("mobilenetv3_small_050"))


def test_parameter_count_from_widths():
    """One SE per UIB on its expanded width (the width of the projection's input)."""
    base, ours = _model_meta(REP), _model_meta(f"se_plugin_{REP}")
    blocks = [m for m in base.modules() if type(m).__name__ == "UniversalInvertedResidual"]
    widths = [b.pw_proj.conv.in_channels for b in blocks]
    assert [se.channels for se in se_modules(ours).values()] == widths and len(widths) == 12
    added = count_params(ours) - count_params(base)
    assert added == sum(se_params(c) for c in widths) == 249_384
    assert count_params(base) == 3_774_024


@pytest.mark.parametrize("arch", [REP, "mobilenetv4_conv_medium", "tf_mobilenetv3_small_minimal_100"])
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    state, before_state = assert_identity_init(model, batch(), exact=True)  # x * 1 == x in the slot
    assert all(".se." in k for k in set(state) - set(before_state))
    assert len(se_modules(model)) == sum(hasattr(m, "se") for m in _model_meta(arch).modules())


def test_se_sits_in_the_uib_slot(rng_input):
    """UIB variants against their own layers composed by hand: ExtraDW (dw_start + dw_mid), ConvNeXt-like (dw_start
    only) and FFN (no depthwise conv): SE after the middle depthwise conv, or right after the expansion without one."""
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_mobilenetv4_conv_medium", se_init="random"))
    seen = set()
    with torch.no_grad():
        for block in model.modules():
            if type(block).__name__ != "SETimmUniversalInvertedResidual":
                continue
            kind = (not isinstance(block.dw_start, nn.Identity), not isinstance(block.dw_mid, nn.Identity))
            if kind in seen:
                continue
            seen.add(kind)
            x = rng_input(1, block.pw_exp.conv.in_channels, 8, 8)
            mid = block.se(block.dw_mid(block.pw_exp(block.dw_start(x))))
            assert block.se.channels == mid.shape[1] == block.pw_proj.conv.in_channels
            expected = block.layer_scale(block.dw_end(block.pw_proj(mid)))
            torch.testing.assert_close(block(x), expected + x if block.has_skip else expected, rtol=0, atol=0)
    assert seen == {(True, True), (True, False), (False, False)}


def test_stages_and_errors():
    """conv_small's stages 1, 2 and 5 are plain convs (no slot): SE stages are those with UIBs, 3 and 4."""
    model = timm.create_model(f"se_plugin_{REP}", se_stages=(4,))
    assert sorted(se_modules(model)) == [f"blocks.3.{i}.se" for i in range(6)]
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(timm.create_model(REP), stages=(5,))
    with pytest.raises(ValueError, match=r"stages \[1\] select no block of MobileNetV3 \(its stages: \[3, 4\]\)"):
        add_se(timm.create_model(REP), stages=(1,))
    with pytest.raises(ValueError, match=r"position 'post' is not supported by timm UniversalInvertedResidual"):
        add_se(timm.create_model(REP), position="post")


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(REP, tmp_path)
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert torch.equal(ours(batch()), base(batch()))
        assert_features_match_base(REP, [2, 4, 8, 16, 32], **kwargs)
    assert_intermediates_match(ours, base, batch())


@pytest.mark.slow
def test_script_fx_compile_and_export_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{REP}", num_classes=5, se_init="random"))
    script_fx_and_compile_match_eager(model, batch())
    exported = torch.export.export(model, (batch(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(batch()), model(batch()))


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{REP}", 12)
    unet = unet_trains_one_step(f"tu-se_plugin_{REP}", 12)
    assert has_se(unet.encoder)

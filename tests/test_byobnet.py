"""SE in timm's BYOB networks (RepVGG, MobileOne, GENet, ResNet-*ts, ...): ``se_plugin_<arch>`` for every arch without
attention, SE in each block's own attention slot as timm's SE variants (``seresnext26ts``, ``repvgg_d2se``) have it;
RepVGG/MobileOne re-parameterisation keeps working with SE.
"""

import math

import pytest
import timm
import torch
from timm.utils import reparameterize_model
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules
from se_plugins.models.byobnet import has_attention
from tests.conftest import random_se, randomize_norm_stats, rounding_tolerance
from tests.family_checks import (
    SE_KEYS,
    assert_features_match_base,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    compile_matches_eager,
    count_params,
    detector_trains_one_step,
    fx_features_se_count,
    fx_matches_eager,
    pretrained_from_base,
    se_params,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

ARCH = "repvgg_a0"  # RepVggBlocks: stem 48, stages of 2 x 48, 4 x 96, 14 x 192, 1 x 1280 channels
# every byobnet arch with attention of its own: channel attention (SE, ECA, GC, BAT) in the model's or some block's
# cfg, or CLIP's attention-pool head
_WITH_ATTENTION = {
    "bat_resnext26ts", "eca_resnet33ts", "eca_resnext26ts", "gcresnet33ts", "gcresnet50t", "gcresnext26ts",
    "gcresnext50ts", "mobileone_s4", "regnetz_b16", "regnetz_b16_evos", "regnetz_c16", "regnetz_c16_evos",
    "regnetz_d32", "regnetz_d8", "regnetz_d8_evos", "regnetz_e8", "repvgg_d2se", "resnet101_clip", "resnet50_clip",
    "resnet50x16_clip", "resnet50x4_clip", "resnet50x64_clip", "seresnet33ts", "seresnext26ts",
}  # fmt: skip


def _builds_attention(arch: str) -> bool:
    with torch.device("meta"):
        model = timm.create_model(arch)
    slots = ("attn", "attn_last", "self_attn")
    return any(
        not isinstance(getattr(m, s, nn.Identity()), nn.Identity) for m in model.modules() for s in slots
    ) or any("Attention" in type(m).__name__ for m in model.modules())


def test_registry_is_every_arch_without_attention():
    bases = [n for n in timm.list_models(module="byobnet", exclude_filters=["test_*"]) if not n.startswith("se_plugin")]
    names = timm.list_models("se_plugin_*", module="byobnet")
    assert set(names) == {f"se_plugin_{n}" for n in bases if n not in _WITH_ATTENTION} and len(names) == 28
    assert {n for n in bases if f"se_plugin_{n}" not in names} == _WITH_ATTENTION
    # the cfg rule against the models timm builds: model-level SE, ECA, GC, block-level SE (mobileone_s4), an
    # attention-pool head (CLIP) -- and the look-alikes without attention
    with_attn = ("seresnet33ts", "eca_resnext26ts", "gcresnet33ts", "mobileone_s4", "resnet50_clip", "repvgg_d2se")
    for arch in (*with_attn, "resnet33ts", "resnext26ts", "mobileone_s0", "gernet_s", "resnet50_clip_gap", "resnet61q"):
        assert has_attention(arch) == _builds_attention(arch), arch


def test_parameter_count_from_widths():
    with torch.device("meta"):
        base, ours = timm.create_model(ARCH), timm.create_model(f"se_plugin_{ARCH}")
    widths = [48] + [48] * 2 + [96] * 4 + [192] * 14 + [1280]  # the stem is a RepVggBlock too (SE, as repvgg_d2se)
    assert count_params(ours) - count_params(base) == sum(se_params(c) for c in widths) == 304_120
    assert count_params(base) == 9_108_968
    assert [se.channels for se in se_modules(ours).values()] == widths


@pytest.mark.parametrize("arch", [ARCH, "mobileone_s0", "gernet_s", "resnet33ts"])
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    # gates are exactly 1: x * 1 == x
    state, before_state = assert_identity_init(model, batch())
    slot = "attn_last" if arch == "gernet_s" else "attn"  # gernet's first stages are BasicBlocks
    new = {k for k in set(state) - set(before_state) if k.startswith("stages.0.0.")}
    assert new == {f"stages.0.0.{slot}.{p}" for p in SE_KEYS}


def test_se_sits_in_the_blocks_own_slot():
    torch.manual_seed(0)
    rep = random_se(timm.create_model(f"se_plugin_{ARCH}", se_init="random")).stages[1][1]
    net = random_se(timm.create_model("se_plugin_gernet_s", se_init="random"))
    basic, bottle = net.stages[0][0], net.stages[2][1]
    with torch.no_grad():
        for block, expected in (
            (rep, lambda b, x: b.act(b.attn(b.conv_1x1(x) + b.conv_kxk(x) + b.identity(x)))),
            (basic, lambda b, x: b.act(b.attn_last(b.conv2_kxk(b.conv1_kxk(x))) + b.shortcut(x))),
            (bottle, lambda b, x: b.act(b.conv3_1x1(b.attn(b.conv2_kxk(b.conv1_1x1(x)))) + x)),
        ):
            x = torch.randn(1, next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels, 8, 8)
            assert block.se is getattr(block, block.se_slot)
            torch.testing.assert_close(block(x), expected(block, x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", [ARCH, "mobileone_s0"])
def test_reparameterize_with_se(arch):
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{arch}", se_init="random"))
    ses = se_modules(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        before = model(batch())
        reparameterize_model(model, inplace=True)
        after = model(batch())
    blocks = [b for b in model.modules() if hasattr(b, "se_slot")]
    assert se_modules(model) == ses and len(blocks) == len(ses)
    assert all(b.reparam_conv is not None and not hasattr(b, "conv_kxk") for b in blocks)  # one conv per block
    # folding the norms into the convs rounds differently in every block: depth x the widest conv's fan-in
    fan_in = max(c.in_channels // c.groups * math.prod(c.kernel_size) for c in convs)
    assert (after - before).abs().max().item() <= rounding_tolerance(before, layers=len(ses), fan_in=fan_in)


def test_timm_se_variant_loads_strictly_with_identical_outputs(tmp_path):
    # seresnext26ts is resnext26ts with timm's SEModule (r=16, ReLU) in every BottleneckBlock's ``attn``
    torch.manual_seed(0)
    timm_se = randomize_norm_stats(timm.create_model("seresnext26ts")).eval()
    ours = timm.create_model("se_plugin_resnext26ts").eval()
    ours.load_state_dict(timm_se.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(ours(batch()), timm_se(batch()))
    torch.save(timm_se.state_dict(), tmp_path / "seresnext26ts.pth")
    overlay = dict(file=str(tmp_path / "seresnext26ts.pth"))
    loaded = timm.create_model("se_plugin_resnext26ts", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch()), timm_se(batch()))


def test_options_and_errors():
    model = timm.create_model(f"se_plugin_{ARCH}", se_stages=(1,), se_reduction=8)
    assert sorted(se_modules(model)) == ["stages.0.0.attn", "stages.0.1.attn", "stem.attn"]  # the stem is stage 1
    assert model.stem.se.hidden_channels == 8
    with pytest.raises(ValueError, match=r"position 'identity' is not supported by timm byobnet RepVggBlock"):
        add_se(timm.create_model(ARCH), position="identity")
    with torch.device("meta"), pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model("eca_resnet33ts"))  # timm's own ECA in the slot
    with pytest.raises(ValueError, match="init must be one of"):
        add_se(timm.create_model(ARCH), init="zeros")


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    with torch.no_grad():
        assert torch.equal(ours(batch()), base(batch()))
        assert_features_match_base(ARCH, [2, 4, 8, 16, 32], **kwargs)
        assert_intermediates_match(ours, base, batch())


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_gernet_s", num_classes=5, se_init="random"))  # all block kinds
    x = batch()
    assert_scripted_matches(model, x)
    assert_scripted_matches(random_se(timm.create_model(f"se_plugin_{ARCH}", se_init="random")), x)
    fx_matches_eager(model, x, grad_modes=(True,))
    compile_matches_eager(model, x)
    assert fx_features_se_count(f"se_plugin_{ARCH}", ".attn.fc1.weight") == 22


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 22)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 22)

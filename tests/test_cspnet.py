"""SE in timm's CSPNet / CSPDarkNet / DarkNet: ``se_plugin_<arch>`` for every arch without attention, SE in each
block's own attention slot (``attn`` in Dark/Edge blocks, ``attn2`` in Bottlenecks) as timm's SE variants have it.
"""


import pytest
import timm
import torch
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules
from tests.conftest import random_se, randomize_norm_stats
from tests.family_checks import (
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

ARCH = "cs3darknet_s"  # DarkBlocks, depths (1, 3, 4, 1), middle widths (32, 64, 128, 256)
_SLOTS = ("attn", "attn2", "attn3")


def _builds_attention(arch: str) -> bool:
    """Whether the model timm builds for ``arch`` has a module in any block's attention slot."""
    with torch.device("meta"):
        model = timm.create_model(arch)
    return any(not isinstance(getattr(m, s, nn.Identity()), nn.Identity) for m in model.modules() for s in _SLOTS)


def test_registry_is_every_arch_without_attention():
    bases = [n for n in timm.list_models(module="cspnet") if not n.startswith("se_plugin_")]
    expected = sorted(f"se_plugin_{n}" for n in bases if not _builds_attention(n))
    assert timm.list_models("se_plugin_*", module="cspnet") == expected and len(expected) == 18
    assert {"sedarknet21", "cs3sedarknet_l", "cs3sedarknet_x", "cs3sedarknet_xdw", "cs3se_edgenet_x"} == {
        n for n in bases if f"se_plugin_{n}" not in expected
    }


def test_parameter_count_from_widths():
    with torch.device("meta"):
        base, ours = timm.create_model(ARCH), timm.create_model(f"se_plugin_{ARCH}")
    widths = [32] + [64] * 3 + [128] * 4 + [256]  # one SE per DarkBlock, on its middle channels
    assert count_params(ours) - count_params(base) == sum(se_params(c) for c in widths) == 21_040
    assert count_params(base) == 3_276_344
    assert [se.channels for se in se_modules(ours).values()] == widths


@pytest.mark.parametrize("arch", [ARCH, "darknet17", "cspresnet50"])
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    # gates are exactly 1: x * 1 == x
    state, before_state = assert_identity_init(model, batch())
    slot = "attn2" if arch == "cspresnet50" else "attn"
    new = {k for k in set(state) - set(before_state) if k.startswith("stages.0.blocks.0.")}
    assert new == {
        f"stages.0.blocks.0.{slot}.{p}" for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")
    }


def test_se_sits_in_the_blocks_own_slot():
    torch.manual_seed(0)
    dark = random_se(timm.create_model("se_plugin_darknet17", se_init="random")).stages[2].blocks[0]
    bottle = random_se(timm.create_model("se_plugin_cspresnet50", se_init="random")).stages[1].blocks[1]
    edge = random_se(timm.create_model("se_plugin_cs3edgenet_x", se_init="random")).stages[0].blocks[0]
    with torch.no_grad():
        for block, expected in (
            (dark, lambda b, x: b.conv2(b.attn(b.conv1(x))) + x),
            (edge, lambda b, x: b.conv2(b.attn(b.conv1(x))) + x),
            (bottle, lambda b, x: b.act3(b.conv3(b.attn2(b.conv2(b.conv1(x)))) + x)),
        ):
            x = torch.randn(1, block.conv1.conv.in_channels, 8, 8)
            assert block.se is getattr(block, block.se_slot)  # ``block.se`` reads the slot back
            torch.testing.assert_close(block(x), expected(block, x), rtol=0, atol=0)
    assert isinstance(bottle.attn3, nn.Identity)
    # SE's activation is the block's, as timm's SE variants build it (LeakyReLU in DarkNet, SiLU in CS3)
    assert isinstance(dark.se.act, nn.LeakyReLU) and isinstance(edge.se.act, nn.SiLU)


def test_timm_se_variant_loads_strictly_with_identical_outputs(tmp_path):
    # cs3sedarknet_l is cs3darknet_l with SE (rd_ratio 1/4, SiLU) in every DarkBlock's ``attn``
    torch.manual_seed(0)
    timm_se = randomize_norm_stats(timm.create_model("cs3sedarknet_l")).eval()
    ours = timm.create_model("se_plugin_cs3darknet_l", se_reduction=4).eval()
    ours.load_state_dict(timm_se.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(ours(batch()), timm_se(batch()))
    torch.save(timm_se.state_dict(), tmp_path / "cs3sedarknet_l.pth")
    overlay = dict(file=str(tmp_path / "cs3sedarknet_l.pth"))
    loaded = timm.create_model(
        "se_plugin_cs3darknet_l", pretrained=True, se_reduction=4, pretrained_cfg_overlay=overlay
    )
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch()), timm_se(batch()))


def test_options_and_errors():
    model = timm.create_model(f"se_plugin_{ARCH}", se_stages=(3, 4), se_reduction=8)
    assert sorted(se_modules(model)) == [f"stages.2.blocks.{i}.attn" for i in range(4)] + ["stages.3.blocks.0.attn"]
    assert model.stages[2].blocks[0].se.hidden_channels == 16
    assert len(se_modules(timm.create_model("se_plugin_darknet17", se_stages=(5,)))) == 1  # DarkNet's fifth stage
    with pytest.raises(ValueError, match=r"position 'post' is not supported by timm cspnet DarkBlock"):
        add_se(timm.create_model(ARCH), position="post")
    with torch.device("meta"), pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model("cs3sedarknet_l"))  # timm's own SE in the same slot
    with pytest.raises(ValueError, match=r"stages \[5\] select no block of CspNet \(its stages: \[1, 2, 3, 4\]\)"):
        add_se(timm.create_model(ARCH), stages=(5,))  # the CS3 models have four stages, DarkNet five
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.5"):
        add_se(timm.create_model(ARCH), stages=(6,))


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    with torch.no_grad():
        assert torch.equal(ours(batch()), base(batch()))
        assert_features_match_base(ARCH, [2, 4, 8, 16, 32], **kwargs)
        assert_intermediates_match(ours, base, batch())


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    x = batch()
    assert_scripted_matches(model, x)
    assert_scripted_matches(random_se(timm.create_model(f"se_plugin_{ARCH}", features_only=True, se_init="random")), x)
    fx_matches_eager(model, x, grad_modes=(True,))
    compile_matches_eager(model, x)
    assert fx_features_se_count(f"se_plugin_{ARCH}", ".attn.fc1.weight") == 9


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 9)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 9)

"""SE in timm's Xceptions, on each residual block's branch before the add (the SE paper's rule for residual units):
``legacy_xception``'s ``Block`` and the aligned ``XceptionModule``/``PreXceptionModule`` (``xception41/65/71``,
``xception41p/65p``), as ``se_plugin_*`` twins and through ``add_se``."""

import copy

import pytest
import timm
import torch
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SE_POSITIONS, add_se, has_se, se_modules
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import batch, count_params, detector_trains_one_step, fx_matches_eager, unet_trains_one_step
from tests.test_torchscript import assert_scripted_matches

ARCHS = ["legacy_xception", "xception41", "xception41p", "xception65", "xception65p", "xception71"]
# SE widths (each block's output): entry flow, middle flow (728), exit flow (1024; aligned: + the no-skip 2048)
WIDTHS = {
    "legacy_xception": [128, 256, 728] + [728] * 8 + [1024],
    "xception41": [128, 256, 728] + [728] * 8 + [1024, 2048],
    "xception65": [128, 256, 728] + [728] * 16 + [1024, 2048],
    "xception71": [128, 256, 256, 728, 728] + [728] * 16 + [1024, 2048],
}
WIDTHS["xception41p"], WIDTHS["xception65p"] = WIDTHS["xception41"], WIDTHS["xception65"]
ADDED = {"legacy_xception": 778_784, "xception41": 1_305_248, "xception65": 1_870_560, "xception71": 1_949_688}
ATTENTION = ("SqueezeExcite", "SEModule", "EcaModule", "CbamModule", "GatherExcite", "Attention", "SelectiveKernel")
SE_SUFFIXES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")


def test_registry_lists_every_xception():
    names = timm.list_models("se_plugin_*xception*")
    assert names == sorted(f"se_plugin_{a}" for a in ARCHS)
    bases = [timm.list_models(module=m, exclude_filters=["se_plugin_*"]) for m in ("xception", "xception_aligned")]
    assert sorted(bases[0] + bases[1]) == ARCHS  # every Xception timm registers
    assert "se_plugin_legacy_xception" in timm.list_models(module="xception")
    assert set(names) - {"se_plugin_legacy_xception"} <= set(timm.list_models(module="xception_aligned"))
    with pytest.warns(UserWarning, match="se_plugin_xception to current se_plugin_legacy_xception"):
        assert has_se(timm.create_model("se_plugin_xception", num_classes=3))


@pytest.mark.parametrize("arch", ARCHS)
def test_no_attention_of_their_own_and_parameter_counts(arch):
    with torch.device("meta"):
        base, ours = timm.create_model(arch), timm.create_model(f"se_plugin_{arch}")
    assert not {type(m).__name__ for m in base.modules()} & set(ATTENTION)  # so every arch gets a twin
    assert [se.channels for se in se_modules(ours).values()] == WIDTHS[arch]
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in WIDTHS[arch]]
    expected = sum(2 * c * h + h + c for c, h in zip(WIDTHS[arch], hidden, strict=True))
    assert count_params(ours) - count_params(base) == expected == ADDED[arch.rstrip("p")]
    if arch == "legacy_xception":
        assert count_params(base) == 22_855_952


@pytest.fixture(scope="module")
def base_models():
    torch.manual_seed(0)
    return {a: randomize_norm_stats(timm.create_model(a, num_classes=5)).eval() for a in ARCHS[:3]}


@pytest.mark.parametrize(
    "arch, position",
    [("legacy_xception", p) for p in SE_POSITIONS] + [("xception41", "standard"), ("xception41p", "standard")],
)
def test_identity_init_keeps_outputs_and_keys(base_models, arch, position):
    model = copy.deepcopy(base_models[arch])
    with torch.no_grad():
        before = model(batch())
        add_se(model, position=position)
        assert torch.equal(model(batch()), before)  # every gate exactly 1: x * 1 == x in IEEE, same adds
        for se in se_modules(model).values():
            se.reset_parameters("random")
        # the paper's init changes the function; seen at the stride-16 features (legacy_xception's exit flow, with
        # its eval-mode norms, barely passes input changes on to the logits)
        after = model.forward_intermediates(batch())[1][3]
        expected = base_models[arch].forward_intermediates(batch())[1][3]
        assert (after - expected).abs().max().item() > 1e-3 * expected.abs().max().item()
    state, before_state = model.state_dict(), base_models[arch].state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    first = "block1" if arch == "legacy_xception" else "blocks.0"
    assert {k for k in state if k.startswith(f"{first}.se.")} == {f"{first}.se.{s}" for s in SE_SUFFIXES}
    assert len(set(state) - set(before_state)) == 5 * len(WIDTHS[arch])


def test_se_sits_on_the_branch_before_the_add():
    torch.manual_seed(0)
    legacy = random_se(timm.create_model("se_plugin_legacy_xception", se_init="random"))
    aligned = random_se(timm.create_model("se_plugin_xception41", se_init="random"))
    pre = random_se(timm.create_model("se_plugin_xception41p", se_init="random"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        block, x = legacy.block2, torch.randn(1, 128, 16, 16, generator=g)  # strided, projection shortcut
        assert same_ops_close(block(x), block.skipbn(block.skip(x)) + block.se(block.rep(x)))
        block, x = legacy.block5, torch.randn(1, 728, 8, 8, generator=g)  # identity shortcut, no final act
        assert same_ops_close(block(x), x + block.se(block.rep(x)))
        assert block.se.gate(block.rep(x)).std() > 0.01
        block, x = aligned.blocks[4], torch.randn(1, 728, 8, 8, generator=g)
        assert same_ops_close(block(x), block.se(block.stack(x)) + x)
        block, x = aligned.blocks[-1], torch.randn(1, 1024, 4, 4, generator=g)  # exit flow, no skip
        assert same_ops_close(block(x), block.se(block.stack(x)))
        block, x = pre.blocks[0], torch.randn(1, 64, 16, 16, generator=g)  # pre-activation: norm shared
        normed = block.norm(x)
        assert same_ops_close(block(x), block.se(block.stack(normed)) + block.shortcut(normed))


def test_options_and_errors():
    model = timm.create_model("se_plugin_legacy_xception", se_stages=(1, 3), se_reduction=8)
    assert sorted(se_modules(model)) == ["block1.se", "block12.se", "block2.se", "block3.se"]
    assert model.block12.se.hidden_channels == 1024 // 8
    with pytest.raises(ValueError, match=r"position 'pre' is not supported by timm aligned Xception XceptionModule"):
        add_se(timm.create_model("xception41"), position="pre")
    with pytest.raises(ValueError, match=r"cannot tell the stage of block 'blocks.0' .*; use stages=None"):
        add_se(timm.create_model("xception41p"), stages=(1,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(model)


def test_pretrained_features_intermediates_and_pruning(base_models, tmp_path):
    for arch in ("legacy_xception", "xception41"):
        torch.save(base_models[arch].state_dict(), tmp_path / f"{arch}.pth")
        overlay = dict(file=str(tmp_path / f"{arch}.pth"), num_classes=5)
        kwargs = dict(pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay)
        ours = timm.create_model(f"se_plugin_{arch}", **kwargs).eval()
        base, ours_state = base_models[arch], ours.state_dict()
        assert all(torch.equal(ours_state[k], v) for k, v in base.state_dict().items())
        assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
        with torch.no_grad():
            assert torch.equal(ours(batch()), base(batch()))
            final, inter = ours.forward_intermediates(batch())  # aligned: the taps inside blocks (forward_with_tap)
            base_final, base_inter = base.forward_intermediates(batch())
            assert all(torch.equal(a, b) for a, b in zip([final, *inter], [base_final, *base_inter], strict=True))
            feats = timm.create_model(f"se_plugin_{arch}", features_only=True, **kwargs).eval()
            assert has_se(feats) and feats.feature_info.reduction() == [2, 4, 8, 16, 32]
            assert all(torch.equal(a, b) for a, b in zip(feats(batch()), inter, strict=True))
    # pruning to the stride-8 tap cuts the last kept module before its last separable conv, and SE with it
    ours.prune_intermediate_layers(indices=(0, 1, 2))
    assert len(ours.blocks) == 3 and len(se_modules(ours)) == 2
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(ours.forward_intermediates(batch())[1], inter[:3], strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["legacy_xception", "xception41"])
def test_torchscript_and_fx_match_eager(arch):
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{arch}", num_classes=5, se_init="random"))
    assert_scripted_matches(model, batch())
    fx_matches_eager(model, batch(), grad_modes=(True,))


@pytest.mark.slow
def test_export_matches_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_xception41p", num_classes=5, se_init="random"))
    exported = torch.export.export(model, (batch(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(batch(1)), model(batch(1)))


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step("se_plugin_xception41", 13)
    unet_trains_one_step("tu-se_plugin_legacy_xception", 12)

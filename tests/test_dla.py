"""SE in timm's DLA: ``se_plugin_dla*`` twins, SE on each tree block's branch after its last BN, before the add."""

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

ARCH = "dla46_c"  # DlaBottleneck, 1.3 M parameters
# one arch per block class: DlaBottleneck, DlaBasic, DlaBottle2neck
ARCHS = [ARCH, "dla34", "dla60_res2next"]


def test_registry_and_parameter_counts():
    bases = [n for n in timm.list_models(module="dla") if not n.startswith("se_plugin_")]
    names = timm.list_models("se_plugin_dla*")
    assert sorted(names) == sorted(f"se_plugin_{b}" for b in bases) and len(names) == 12
    assert set(names) <= set(timm.list_models(module="dla"))
    with torch.device("meta"):
        base, ours = timm.create_model("dla34"), timm.create_model("se_plugin_dla34")
    # dla34: two BasicBlocks per level-1 tree (level2, level5), four in the level-2 trees (level3, level4)
    expected = sum(n * se_params(c) for n, c in zip((2, 4, 4, 2), (64, 128, 256, 512), strict=True))
    assert count_params(ours) - count_params(base) == expected == 111_408
    assert count_params(base) == 15_742_104


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("position", ["standard", "pre", "post", "identity"])
def test_identity_init_keeps_outputs_and_keys(arch, position):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    # the branch as timm runs it, gates exactly 1
    state, before_state = assert_identity_init(model, batch(), position=position)
    assert {k for k in set(state) - set(before_state) if k.startswith("level3.tree1.tree1.")} == {
        f"level3.tree1.tree1.se.{k}" for k in SE_KEYS
    }
    assert all(".se." in k for k in set(state) - set(before_state))


def _by_hand(block: torch.nn.Module, position: str, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """A DlaBasic with SE at ``position``, composed from its submodules."""
    se = block.se

    def branch(t: torch.Tensor) -> torch.Tensor:
        return block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(t)))))

    if position == "standard":
        return torch.relu(se(branch(x)) + shortcut)
    if position == "pre":
        return torch.relu(branch(se(x)) + shortcut)
    if position == "post":
        return se(torch.relu(branch(x) + shortcut))
    return torch.relu(branch(x) + se(shortcut))


@pytest.mark.parametrize("position", ["standard", "pre", "post", "identity"])
def test_positions_against_the_block_composed_by_hand(position):
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_dla34", se_position=position, se_init="random"))
    tree = model.level3.tree1  # tree1 gets the tree's projected shortcut, tree2 none (the identity)
    x = torch.randn(1, tree.tree1.conv1.in_channels, 16, 16)
    with torch.no_grad():
        shortcut = tree.project(tree.downsample(x))
        torch.testing.assert_close(tree.tree1(x, shortcut), _by_hand(tree.tree1, position, x, shortcut))
        x1 = tree.tree1(x, shortcut)
        torch.testing.assert_close(tree.tree2(x1), _by_hand(tree.tree2, position, x1, x1))
    assert tree.tree1.se.channels == (128 if position != "pre" else 64)


def test_fused_equals_plain():
    torch.manual_seed(0)
    fused = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    plain = set_se_fused(copy.deepcopy(fused), False)
    with torch.no_grad():
        # addcmul vs multiply-then-add: one rounding per block, far below this model's 1e-5 relative bound
        assert same_ops_close(fused(batch()), plain(batch()))


def test_options_and_errors():
    model = add_se(timm.create_model(ARCH), stages=(1, 4), reduction=8)
    assert sorted(se_modules(model)) == ["level2.tree1.se", "level2.tree2.se", "level5.tree1.se", "level5.tree2.se"]
    assert model.level5.tree1.se.hidden_channels == make_divisible(256 / 8, 8)
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(timm.create_model(ARCH), stages=(5,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model(f"se_plugin_{ARCH}"))


def test_pretrained_base_weights_through_timm(tmp_path):
    # timm loads DLA non-strictly: the helper checks strictness (every base key, nothing else but SE)
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    x = batch()
    with torch.no_grad():
        assert torch.equal(ours(x), base(x))
        assert_intermediates_match(ours, base, x)
        assert_features_match_base(ARCH, [2, 4, 8, 16, 32], x=x, se_count=12, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [ARCH, "dla60_res2next"])
def test_torchscript_and_fx_match_eager(arch):
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{arch}", num_classes=5, se_init="random"))
    x = batch()
    assert_scripted_matches(model, x)  # DlaTree calls the SE forward with timm's (x, shortcut, children)
    fx_matches_eager(model, x)
    if arch == ARCH:
        compile_matches_eager(model, x)
        assert fx_features_se_count(f"se_plugin_{ARCH}") == 12


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    # DLA's feature indices 2..5 are strides 4..32 (0 and 1: the stride-1 and stride-2 conv levels)
    detector_trains_one_step(f"se_plugin_{ARCH}", 12, out_indices=(2, 3, 4, 5))
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 12)

"""SE-Inception-ResNet-v2: SE on the scaled residual branch of timm's ``Block35``/``Block17``/``Block8``, before the
add, as in SE-ResNet (``se_plugin_inception_resnet_v2`` and ``add_se``); the mixed modules get none."""

import copy

import pytest
import timm
import torch
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SE_POSITIONS, add_se, has_se, se_modules, set_se_fused
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import count_params, detector_trains_one_step, unet_trains_one_step
from tests.test_torchscript import assert_scripted_matches

ARCH = "inception_resnet_v2"
# branch widths: 10 x Block35 (conv2d 128 -> 320), 20 x Block17 (384 -> 1088), 9 x Block8 + block8 (448 -> 2080)
WIDTHS = [320] * 10 + [1088] * 20 + [2080] * 10
SE_SUFFIXES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")


def _x(seed: int = 0, size: int = 80) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _branches(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    names = ("branch0", "branch1", "branch2") if hasattr(block, "branch2") else ("branch0", "branch1")
    return torch.cat([getattr(block, n)(x) for n in names], 1)


def test_registry_and_parameter_count_from_widths():
    assert timm.list_models("se_plugin_inception_resnet_v2*") == ["se_plugin_inception_resnet_v2"]
    assert "se_plugin_inception_resnet_v2" in timm.list_models(module=ARCH)
    assert timm.list_pretrained("se_plugin_inception_resnet_v2*") == [
        "se_plugin_inception_resnet_v2.tf_ens_adv_in1k", "se_plugin_inception_resnet_v2.tf_in1k"
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="se_plugin_ens_adv_inception_resnet_v2 to current"):
        assert timm.create_model("se_plugin_ens_adv_inception_resnet_v2").pretrained_cfg["tag"] == "tf_ens_adv_in1k"
    with torch.device("meta"):
        base, ours = timm.create_model(ARCH), timm.create_model(f"se_plugin_{ARCH}")
    assert [se.channels for se in se_modules(ours).values()] == WIDTHS
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in WIDTHS]
    expected = sum(2 * c * h + h + c for c, h in zip(WIDTHS, hidden, strict=True))
    assert expected == 8_660_560 and count_params(base) == 55_843_464
    assert count_params(ours) - count_params(base) == expected
    assert not any(n.startswith("mixed_") for n in se_modules(ours))  # the non-residual modules get none


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return randomize_norm_stats(timm.create_model(ARCH, num_classes=5)).eval()


@pytest.mark.parametrize("position", SE_POSITIONS)
def test_identity_init_keeps_outputs_and_keys_at_every_position(base_model, position):
    model = copy.deepcopy(base_model)
    with torch.no_grad():
        before = base_model(_x())
        add_se(model, position=position)
        assert same_ops_close(model(_x()), before)
        if position == "standard":
            set_se_fused(model, False)
            assert torch.equal(model(_x()), before)  # unfused: x * 1 == x in IEEE, then timm's own add
            set_se_fused(model, True)
        for se in se_modules(model).values():
            se.reset_parameters("random")
        assert (model(_x()) - before).abs().max().item() > 1e-3 * before.abs().max().item()
    state, before_state = model.state_dict(), base_model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    if position == "standard":
        assert {k for k in state if k.startswith("repeat_1.4.se.")} == {f"repeat_1.4.se.{s}" for s in SE_SUFFIXES}
        assert {k for k in state if k.startswith("block8.se.")} == {f"block8.se.{s}" for s in SE_SUFFIXES}
        assert len(set(state) - set(before_state)) == 5 * 40


def test_se_sits_on_the_scaled_branch_before_the_add():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", se_init="random"))
    post = random_se(timm.create_model(f"se_plugin_{ARCH}", se_init="random", se_position="post"))
    with torch.no_grad():
        for block, cin, size, act in (
            (model.repeat[3], 320, 9, True),
            (model.repeat_1[0], 1088, 6, True),
            (model.repeat_2[8], 2080, 3, True),
            (model.block8, 2080, 3, False),  # the last Block8: no ReLU after its add
        ):
            x = torch.randn(1, cin, size, size, generator=torch.Generator().manual_seed(1))
            expected = x + block.se(block.conv2d(_branches(block, x)) * block.scale)
            assert same_ops_close(block(x), expected.relu() if act else expected)
            assert block.se.gate(block.conv2d(_branches(block, x))).std() > 0.01
        block, x = post.repeat[0], torch.randn(1, 320, 9, 9, generator=torch.Generator().manual_seed(2))
        assert same_ops_close(block(x), block.se((block.conv2d(_branches(block, x)) * 0.17 + x).relu()))


def test_stages_and_errors():
    model = timm.create_model(f"se_plugin_{ARCH}", se_stages=(3,), se_reduction=8)
    assert sorted(se_modules(model)) == ["block8.se"] + [f"repeat_2.{i}.se" for i in range(9)]
    assert model.block8.se.hidden_channels == make_divisible(2080 / 8, 8, round_limit=0.0) == 264
    model = add_se(timm.create_model(ARCH), stages=(1, 2))
    assert {n.split(".")[0] for n in se_modules(model)} == {"repeat", "repeat_1"}
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.3"):
        add_se(timm.create_model(ARCH), stages=(4,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(model)


def test_pretrained_base_weights_features_and_intermediates(base_model, tmp_path):
    torch.save(base_model.state_dict(), tmp_path / "base.pth")
    overlay = dict(file=str(tmp_path / "base.pth"), num_classes=5)  # the checkpoint's head: timm keeps it
    kwargs = dict(pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay)
    ours = timm.create_model(f"se_plugin_{ARCH}", **kwargs).eval()
    ours_state = ours.state_dict()
    assert all(torch.equal(ours_state[k], v) for k, v in base_model.state_dict().items())
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert same_ops_close(ours(_x()), base_model(_x()))
        final, inter = ours.forward_intermediates(_x())
        base_final, base_inter = base_model.forward_intermediates(_x())
        assert all(same_ops_close(a, b) for a, b in zip([final, *inter], [base_final, *base_inter], strict=True))
        feats = timm.create_model(f"se_plugin_{ARCH}", features_only=True, out_indices=(1, 2, 3), **kwargs).eval()
        assert has_se(feats) and len(se_modules(feats)) == 30  # the last kept level is repeat_1's output
        assert all(same_ops_close(a, b) for a, b in zip(feats(_x()), base_inter[1:4], strict=True))


@pytest.mark.slow
def test_torchscript_fx_and_export_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    assert_scripted_matches(model, _x())  # also the last Block8's optional ReLU
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert same_ops_close(graph(_x()), model(_x()))
    # export on the stride-8 features (stem, mixed_5b, 10 x Block35): the same SE forward, a tenth of the graph
    feats = random_se(timm.create_model(f"se_plugin_{ARCH}", features_only=True, out_indices=(2,), se_init="random"))
    exported = torch.export.export(feats, (_x(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(_x(1))[0], feats(_x(1))[0])


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 40, size=(96, 128), box=(8.0, 8.0, 60.0, 70.0))
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 40, size=96)

"""SE-Inception-v4: SE on the output of every Inception and Reduction module of timm's ``inception_v4``
(``se_plugin_inception_v4`` and ``add_se``), stages by the grid each module outputs."""

import importlib

import pytest
import timm
import torch
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SEOutputBlock, add_se, has_se, se_modules
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import assert_identity_init, assert_intermediates_match, count_params, fx_matches_eager
from tests.test_torchscript import assert_scripted_matches

timm_iv4 = importlib.import_module("timm.models.inception_v4")  # the attribute of timm.models is the entrypoint
# concatenated output widths of features.3..21: Mixed3a/4a/5a, 4 x InceptionA, ReductionA, 7 x InceptionB,
# ReductionB, 3 x InceptionC
WIDTHS = [160, 192, 384] + [384] * 4 + [1024] + [1024] * 7 + [1536] + [1536] * 3
STAGES = {1: range(3, 6), 2: range(6, 10), 3: range(10, 18), 4: range(18, 22)}
SE_SUFFIXES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(seed))


def test_registry_and_parameter_count_from_widths():
    assert timm.list_models("se_plugin_inception_v4*") == ["se_plugin_inception_v4"]
    assert "se_plugin_inception_v4" in timm.list_models(module="inception_v4")
    with torch.device("meta"):
        base, ours = timm.create_model("inception_v4"), timm.create_model("se_plugin_inception_v4")
    assert [se.channels for se in se_modules(ours).values()] == WIDTHS
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in WIDTHS]
    expected = sum(2 * c * h + h + c for c, h in zip(WIDTHS, hidden, strict=True))
    assert expected == 2_346_736 and count_params(base) == 42_679_816
    assert count_params(ours) - count_params(base) == expected


def test_identity_init_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model("inception_v4", num_classes=5)).eval()
    # every gate exactly 1: x * 1 == x in IEEE
    state, before_state = assert_identity_init(model, _x())
    assert set(state) - set(before_state) == {f"features.{i}.se.{s}" for i in range(3, 22) for s in SE_SUFFIXES}


def test_se_scales_the_module_output():
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_inception_v4", se_init="random"))
    with torch.no_grad():
        for index, base_class, cin, size in ((3, timm_iv4.Mixed3a, 64, 15), (10, timm_iv4.ReductionA, 384, 9)):
            block = model.features[index]
            assert isinstance(block, SEOutputBlock) and isinstance(block, base_class)
            x = torch.randn(1, cin, size, size, generator=torch.Generator().manual_seed(1))
            plain = base_class.forward(block, x)
            assert block.se.gate(plain).std() > 0.01
            assert torch.equal(block(x), block.se(plain)) and same_ops_close(block(x), plain * block.se.gate(plain))


def test_stages_and_errors():
    for stage, indices in STAGES.items():
        model = timm.create_model("se_plugin_inception_v4", se_stages=(stage,), se_reduction=8)
        assert sorted(se_modules(model), key=lambda n: int(n.split(".")[1])) == [f"features.{i}.se" for i in indices]
    assert model.features[18].se.hidden_channels == 1536 // 8
    with pytest.raises(ValueError, match=r"position 'identity' is not supported by timm Inception-v4 Mixed3a "):
        add_se(timm.create_model("inception_v4"), position="identity")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(timm.create_model("inception_v4"), stages=(5,))


def test_pretrained_base_weights_features_and_intermediates(tmp_path):
    torch.manual_seed(0)
    torch.save(randomize_norm_stats(timm.create_model("inception_v4")).state_dict(), tmp_path / "base.pth")
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "base.pth")))
    base = timm.create_model("inception_v4", **kwargs).eval()
    ours = timm.create_model("se_plugin_inception_v4", **kwargs).eval()
    state, ours_state = base.state_dict(), ours.state_dict()
    assert all(torch.equal(ours_state[k], v) for k, v in state.items())
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert torch.equal(ours(_x()), base(_x()))
        _, inter = assert_intermediates_match(ours, base, _x())
        feats = timm.create_model("se_plugin_inception_v4", features_only=True, **kwargs).eval()
        assert has_se(feats) and len(se_modules(feats)) == 19 and feats.feature_info.reduction() == [2, 4, 8, 16, 32]
        assert all(torch.equal(a, b) for a, b in zip(feats(_x()), inter, strict=True))


@pytest.mark.slow
def test_torchscript_and_fx_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model("se_plugin_inception_v4", num_classes=5, se_init="random"))
    assert_scripted_matches(model, _x())
    fx_matches_eager(model, _x(), grad_modes=(True,))

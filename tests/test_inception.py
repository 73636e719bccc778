"""SE-Inception (the SE paper's Fig. 2): SE on each Inception module's output, in timm's and torchvision's
Inception-v3 (``se_plugin_inception_v3`` and ``add_se``) and in torchvision's GoogLeNet.

Inception nets need inputs of at least 75 px: the tests run one 80 px forward per model, parameter counts on the
meta device.
"""

import importlib

import pytest
import timm
import torch
import torchvision
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SEOutputBlock, add_se, has_se, se_modules
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    assert_identity_init,
    assert_intermediates_match,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

timm_iv3 = importlib.import_module("timm.models.inception_v3")  # the attribute of timm.models is the entrypoint
tv_googlenet = importlib.import_module("torchvision.models.googlenet")

# concatenated output widths of Inception-v3's 11 modules: Mixed_5b..5d (35x35), 6a..6e (17x17), 7a..7c (8x8)
INCEPTION_V3_WIDTHS = [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
# GoogLeNet's 9 modules: inception3a/3b, 4a..4e, 5a/5b (each the sum of its four branches' widths)
GOOGLENET_WIDTHS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]
SE_SUFFIXES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")


def _x(seed: int = 0, size: int = 80) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _se_params(widths: list[int], reduction: int = 16) -> int:
    hidden = [make_divisible(c / reduction, 8, round_limit=0.0) for c in widths]  # SqueezeExcite's rule
    return sum(2 * c * h + h + c for c, h in zip(widths, hidden, strict=True))


def _models():
    return {
        "timm": lambda: timm.create_model("inception_v3", num_classes=5),
        "torchvision": lambda: torchvision.models.inception_v3(
            num_classes=5, aux_logits=True, transform_input=True, init_weights=False
        ),
        "googlenet": lambda: torchvision.models.googlenet(
            num_classes=5, aux_logits=True, transform_input=True, init_weights=False
        ),
    }


def test_registry_tags_and_deprecated_names():
    assert timm.list_models("se_plugin_inception_v3*") == ["se_plugin_inception_v3"]
    assert "se_plugin_inception_v3" in timm.list_models(module="inception_v3")  # timm's module filter sees it
    assert timm.list_pretrained("se_plugin_inception_v3*") == [
        f"se_plugin_inception_v3.{tag}" for tag in ("gluon_in1k", "tf_adv_in1k", "tf_in1k", "tv_in1k")
    ]
    cfg = timm.models.get_pretrained_cfg("se_plugin_inception_v3.gluon_in1k")
    assert cfg.architecture == "se_plugin_inception_v3" and cfg.mean == timm.data.IMAGENET_DEFAULT_MEAN
    # timm maps gluon_/tf_/adv_inception_v3 to tags of inception_v3; the twins' old names map the same way
    with pytest.warns(UserWarning, match="se_plugin_adv_inception_v3 to current se_plugin_inception_v3.tf_adv_in1k"):
        model = timm.create_model("se_plugin_adv_inception_v3", num_classes=3)
    assert has_se(model) and model.pretrained_cfg["tag"] == "tf_adv_in1k"


def test_parameter_counts_from_widths():
    with torch.device("meta"):
        base, ours = timm.create_model("inception_v3"), timm.create_model("se_plugin_inception_v3")
        tv_base = torchvision.models.inception_v3(init_weights=False)
        tv = add_se(torchvision.models.inception_v3(init_weights=False))
        googlenet_base = torchvision.models.googlenet(init_weights=False)
        googlenet = add_se(torchvision.models.googlenet(init_weights=False))
    assert [se.channels for se in se_modules(ours).values()] == INCEPTION_V3_WIDTHS
    assert _se_params(INCEPTION_V3_WIDTHS) == 1_659_312
    assert count_params(base) == 23_834_568 and count_params(ours) - count_params(base) == 1_659_312
    assert count_params(tv) - count_params(tv_base) == 1_659_312  # torchvision's modules have the same widths
    assert [se.channels for se in se_modules(googlenet).values()] == GOOGLENET_WIDTHS
    assert count_params(googlenet) - count_params(googlenet_base) == _se_params(GOOGLENET_WIDTHS) == 494_288


@pytest.mark.parametrize("kind", list(_models()))
def test_identity_init_keeps_outputs_and_keys(kind):
    torch.manual_seed(0)
    model = randomize_norm_stats(_models()[kind]()).eval()
    # position=None: the family's own, the module output; every gate exactly 1: x * 1 == x in IEEE
    state, before_state = assert_identity_init(model, _x())
    first = "inception3a" if kind == "googlenet" else "Mixed_5b"
    assert {k for k in state if k.startswith(f"{first}.se.")} == {f"{first}.se.{s}" for s in SE_SUFFIXES}
    assert set(state) - set(before_state) == {f"{name}.{s}" for name in se_modules(model) for s in SE_SUFFIXES}
    assert not any(name.startswith(("AuxLogits", "aux")) for name in se_modules(model))  # no SE in aux heads


def test_se_scales_the_module_output():
    """A module's output, computed by the module class's own forward, times SE's gate of it."""
    torch.manual_seed(0)
    timm_model = random_se(timm.create_model("se_plugin_inception_v3", se_init="random"))
    googlenet = random_se(add_se(torchvision.models.googlenet(init_weights=False), init="random"))
    with torch.no_grad():
        for block, base_class, cin, size in (
            (timm_model.Mixed_6a, timm_iv3.InceptionB, 288, 17),  # a reduction with a pooling branch
            (timm_model.Mixed_7b, timm_iv3.InceptionE, 1280, 8),
            (googlenet.inception4a, tv_googlenet.Inception, 480, 14),
        ):
            assert isinstance(block, SEOutputBlock) and isinstance(block, base_class)
            x = torch.randn(1, cin, size, size, generator=torch.Generator().manual_seed(1))
            plain = base_class.forward(block, x)
            gate = block.se.gate(plain)
            assert gate.shape == (1, block.se.channels, 1, 1) and gate.std() > 0.01
            assert torch.equal(block(x), block.se(plain)) and same_ops_close(block(x), plain * gate)


def test_options_and_errors():
    model = add_se(torchvision.models.inception_v3(init_weights=False), stages=[2], reduction=8)
    assert sorted(se_modules(model)) == ["Mixed_6a.se", "Mixed_6b.se", "Mixed_6c.se", "Mixed_6d.se", "Mixed_6e.se"]
    assert model.Mixed_6a.se.hidden_channels == 768 // 8
    timm_model = timm.create_model("se_plugin_inception_v3", se_stages=(1, 3))
    assert sorted(se_modules(timm_model)) == [f"Mixed_{n}.se" for n in ("5b", "5c", "5d", "7a", "7b", "7c")]
    googlenet = add_se(torchvision.models.googlenet(init_weights=False), stages=(1, 3))
    assert sorted(se_modules(googlenet)) == ["inception3a.se", "inception3b.se", "inception5a.se", "inception5b.se"]
    with pytest.raises(ValueError, match=r"position 'standard' is not supported by timm Inception-v3 InceptionA "):
        add_se(timm.create_model("inception_v3"), position="standard")
    with pytest.raises(ValueError, match=r"position 'pre' is not supported by torchvision GoogLeNet Inception"):
        add_se(torchvision.models.googlenet(init_weights=False), position="pre")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.3"):
        add_se(torchvision.models.googlenet(init_weights=False), stages=(4,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm_model)


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """An inception_v3 checkpoint with the torchvision tag's auxiliary head, standing in for downloaded weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "inception_v3.pth"
    torch.save(randomize_norm_stats(timm.create_model("inception_v3", aux_logits=True)).state_dict(), path)
    return path


def test_pretrained_base_weights_features_and_intermediates(base_file):
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(base_file)))
    # the tv_in1k tag's checkpoint has the auxiliary head: timm loads it strictly with aux_logits=True
    with_aux = timm.create_model("se_plugin_inception_v3.tv_in1k", aux_logits=True, **kwargs)
    state, aux_state = torch.load(base_file, weights_only=True), with_aux.state_dict()
    assert set(state) < set(aux_state) and all(torch.equal(aux_state[k], v) for k, v in state.items())
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(with_aux).values())
    # without it (the aux head runs even in eval, and needs >= 139 px), the rest loads; compare at 80 px
    ours = timm.create_model("se_plugin_inception_v3.tv_in1k", **kwargs).eval()
    base = timm.create_model("inception_v3.tv_in1k", **kwargs).eval()
    with torch.no_grad():
        assert torch.equal(ours(_x()), base(_x()))
        _, inter = assert_intermediates_match(ours, base, _x())
        feats = timm.create_model("se_plugin_inception_v3", features_only=True, **kwargs).eval()
        assert len(se_modules(feats)) == 11 and feats.feature_info.reduction() == [2, 4, 8, 16, 32]
        assert all(torch.equal(a, b) for a, b in zip(feats(_x()), inter, strict=True))


@pytest.mark.slow
def test_torchscript_and_fx_match_eager():
    torch.manual_seed(0)
    timm_model = random_se(timm.create_model("se_plugin_inception_v3", num_classes=5, se_init="random"))
    assert_scripted_matches(timm_model, _x())
    fx_matches_eager(timm_model, _x())
    # torchvision's Inception3 scripts with its own eager_outputs: scripted, it returns the (logits, aux) tuple
    tv = random_se(add_se(_models()["torchvision"](), init="random"))
    with torch.no_grad(), pytest.warns(UserWarning, match="Scripted Inception3 always returns"):
        assert same_ops_close(torch.jit.script(tv)(_x()).logits, tv(_x()))


@pytest.mark.slow
def test_export_matches_eager():
    torch.manual_seed(0)
    model = random_se(add_se(torchvision.models.googlenet(num_classes=5, aux_logits=False, init_weights=False)))
    exported = torch.export.export(model, (_x(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(_x(1)), model(_x(1)))


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    big = dict(size=(96, 128), box=(8.0, 8.0, 60.0, 70.0))
    detector = detector_trains_one_step("se_plugin_inception_v3", 11, **big)  # out_indices (1, 2, 3, 4): every module
    assert detector.backbone.strides == [4, 8, 16, 32]
    # valid-padded maps (96 px: 45, 20, 9, 4, 1) still feed smp's decoder, which resizes to each skip
    unet_trains_one_step("tu-se_plugin_inception_v3", 11, size=96)

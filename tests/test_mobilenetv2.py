"""SE in MobileNetV2: timm's ``se_plugin_mobilenetv2_*`` twins and ``add_se`` on timm's and torchvision's models.

SE sits where the MobileNetV3/EfficientNet authors put it: after the depthwise conv's norm and activation, on the
expanded channels, before the linear projection, in every block (with or without a residual add).
"""

import copy

import pytest
import timm
import torch
import torchvision
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, has_se, se_modules, set_se_fused
from se_plugins.segmentation import se_unet
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    assert_features_match_base,
    assert_intermediates_match,
    compile_matches_eager,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

SMALL_ARCH = "mobilenetv2_050"
# expanded (SE) widths of mobilenetv2_100's 17 blocks: the depthwise-separable first block, then 6 x block input
MOBILENETV2_100_SE_WIDTHS = [32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576, 960, 960, 960]


def _models():
    return {
        "timm": lambda: timm.create_model(SMALL_ARCH, num_classes=5),
        "torchvision": lambda: torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.5),
    }


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """A mobilenetv2_050 checkpoint on disk, standing in for downloaded ImageNet weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / f"{SMALL_ARCH}.pth"
    torch.save(randomize_norm_stats(timm.create_model(SMALL_ARCH)).state_dict(), path)
    return path


def test_registry_lists_every_mobilenetv2():
    names = timm.list_models("se_plugin_mobilenetv2_*")
    assert names == [f"se_plugin_{b}" for b in timm.list_models("mobilenetv2_*")]
    assert len(names) == 7 and "se_plugin_mobilenetv2_100" in names
    assert set(names) <= set(timm.list_models(module="efficientnet"))  # timm's module filter sees them
    assert timm.models.get_pretrained_cfg("se_plugin_mobilenetv2_100").architecture == "se_plugin_mobilenetv2_100"


def test_parameter_count_from_widths():
    with torch.device("meta"):
        base, ours = timm.create_model("mobilenetv2_100"), timm.create_model("se_plugin_mobilenetv2_100")
        tv = add_se(torchvision.models.mobilenet_v2())
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in MOBILENETV2_100_SE_WIDTHS]  # SqueezeExcite's rule
    expected = sum(2 * c * h + h + c for c, h in zip(MOBILENETV2_100_SE_WIDTHS, hidden, strict=True))
    assert expected == 613_320
    assert count_params(ours) - count_params(base) == expected and count_params(base) == 3_504_872
    assert count_params(tv) == count_params(ours)  # torchvision's MobileNetV2 has the same widths
    assert [se.channels for se in se_modules(ours).values()] == MOBILENETV2_100_SE_WIDTHS


@pytest.mark.parametrize("kind", list(_models()))
def test_identity_init_keeps_outputs_and_keys(kind, rng_input):
    torch.manual_seed(0)
    model = randomize_norm_stats(_models()[kind]()).eval()
    before_state = copy.deepcopy(model.state_dict())
    x = rng_input(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        add_se(model)
        after = model(x)
    assert has_se(model) and len(se_modules(model)) == 17  # every block, residual add or not
    assert same_ops_close(after, before)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    assert all(".se." in k for k in set(state) - set(before_state))
    with torch.no_grad():
        for se in se_modules(model).values():
            se.reset_parameters("random")
        assert (model(x) - before).abs().max().item() > 1e-3  # the paper's init changes the function
    assert all(se.gate_gain.item() == 1.0 for se in se_modules(model).values())


def test_se_sits_after_the_depthwise_conv(rng_input):
    """Each block against its own layers composed by hand: expand, depthwise, SE, project (+ shortcut)."""
    torch.manual_seed(0)
    tv = random_se(add_se(torchvision.models.mobilenet_v2(width_mult=0.5), init="random"))
    tm = random_se(timm.create_model(f"se_plugin_{SMALL_ARCH}", se_init="random"))
    with torch.no_grad():
        for block, residual in ((tv.features[2], False), (tv.features[3], True)):  # stride 2, then a residual add
            x = rng_input(1, block.conv[0][0].in_channels, 16, 16)
            expected = block.conv[3](block.conv[2](block.se(block.conv[1](block.conv[0](x)))))
            torch.testing.assert_close(block(x), expected + x if residual else expected, rtol=0, atol=0)
        block = tm.blocks[1][1]  # timm InvertedResidual with a residual add
        x = rng_input(1, block.conv_pw.in_channels, 16, 16)
        expected = block.bn3(block.conv_pwl(block.se(block.bn2(block.conv_dw(block.bn1(block.conv_pw(x)))))))
        torch.testing.assert_close(block(x), expected + x, rtol=0, atol=0)
        block = tm.blocks[0][0]  # timm DepthwiseSeparableConv, no add
        x = rng_input(1, block.conv_dw.in_channels, 16, 16)
        torch.testing.assert_close(block(x), block.bn2(block.conv_pw(block.se(block.bn1(block.conv_dw(x))))))


def test_options_and_errors():
    model = timm.create_model(f"se_plugin_{SMALL_ARCH}", se_reduction=4, se_stages=(2, 7))
    ses = se_modules(model)
    assert sorted(ses) == ["blocks.1.0.se", "blocks.1.1.se", "blocks.6.0.se"]
    assert ses["blocks.1.0.se"].hidden_channels == make_divisible(48 / 4, 8, round_limit=0.0)
    assert set_se_fused(model, False) is model  # no add next to the scale: accepted, nothing to fuse
    with pytest.raises(ValueError, match=r"position 'pre' is not supported by timm .*supported: \('standard',\)"):
        add_se(timm.create_model(SMALL_ARCH), position="pre")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.7"):
        add_se(timm.create_model(SMALL_ARCH), stages=(8,))
    with pytest.raises(ValueError, match="cannot tell the stage of block 'features.1'"):
        add_se(torchvision.models.mobilenet_v2(), stages=(1,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model("efficientnet_b0"))  # timm's own SE in the same slot


def test_pretrained_base_weights_through_timm(base_file):
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(base_file)))
    base = timm.create_model(SMALL_ARCH, **kwargs).eval()
    ours = timm.create_model(f"se_plugin_{SMALL_ARCH}", **kwargs).eval()
    state = torch.load(base_file, weights_only=True)
    ours_state = ours.state_dict()
    assert all(torch.equal(ours_state[k], v) for k, v in state.items())
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert same_ops_close(ours(x), base(x))
        assert_features_match_base(SMALL_ARCH, [2, 4, 8, 16, 32], exact=False, x=x, **kwargs)
        assert_intermediates_match(ours, base, x, exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "timm_features", "torchvision"])
def test_torchscript_matches_eager(kind, rng_input):
    torch.manual_seed(0)
    build = {
        "timm": lambda: timm.create_model(f"se_plugin_{SMALL_ARCH}", num_classes=5, se_init="random"),
        "timm_features": lambda: timm.create_model(f"se_plugin_{SMALL_ARCH}", features_only=True, se_init="random"),
        "torchvision": lambda: add_se(torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.5), init="random"),
    }[kind]
    assert_scripted_matches(random_se(build()), rng_input(2, 3, 64, 64))


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("kind", list(_models()))
def test_fx_trace_matches_eager_and_trains(kind, grad, rng_input):
    torch.manual_seed(0)
    model = random_se(add_se(_models()[kind](), init="random"))
    x = rng_input(2, 3, 64, 64)
    fx_matches_eager(model, x, grad_modes=(grad,))


def test_fx_features_have_se(rng_input):
    fx = timm.create_model(f"se_plugin_{SMALL_ARCH}", features_only=True, feature_cls="fx")
    listed = random_se(timm.create_model(f"se_plugin_{SMALL_ARCH}", features_only=True))
    assert sum(".se.fc1.weight" in k for k in fx.state_dict()) == 17
    fx.load_state_dict({f"graph_module.{k}": v for k, v in listed.state_dict().items()})
    x = rng_input(1, 3, 64, 64)
    with torch.no_grad():
        assert all(same_ops_close(a, b) for a, b in zip(fx.eval()(x), listed(x), strict=True))


@pytest.mark.slow
def test_compile_fullgraph(rng_input):
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{SMALL_ARCH}", num_classes=5, se_init="random"))
    x = rng_input(2, 3, 64, 64)
    compile_matches_eager(model, x)


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{SMALL_ARCH}", 17)
    unet_trains_one_step(f"tu-se_plugin_{SMALL_ARCH}", 17)


def test_se_unet_with_mobilenet_encoders():
    native = se_unet("mobilenet_v2", 2, se_decoder=False)  # smp's encoder is torchvision's MobileNetV2
    assert len(se_modules(native)) == 17 and "encoder.features.2.se.fc1.weight" in native.state_dict()
    timm_encoder = se_unet(f"tu-{SMALL_ARCH}", 2, se_decoder=False, se_stages=(6, 7))
    expected = [f"encoder.model.blocks.{s}.{b}.se" for s, b in ((5, 0), (5, 1), (5, 2), (6, 0))]
    assert sorted(se_modules(timm_encoder)) == expected

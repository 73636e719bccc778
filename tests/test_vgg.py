"""SE in VGG (timm ``se_plugin_vgg*`` twins, ``add_se`` on timm's, torchvision's and smp's VGGs).

SE sits after the non-linearity following each conv (the SE paper, Sec. 3.3; SE-VGG-16 with BN, Table 2): each
``ReLU`` of ``features`` that follows a conv (and its BN) becomes ``SEReLU``; SE keys are ``features.<i>.se.*``.
"""

import re

import pytest
import timm
import torch
import torchvision
import torchvision.models.vgg as tv_vgg
from timm.layers import make_divisible
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, has_se, se_modules
from se_plugins.insert.vgg import SEReLU
from se_plugins.segmentation import se_unet
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    SE_KEYS,
    assert_identity_init,
    assert_intermediates_match,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    pretrained_from_base,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

ARCH = "vgg11_bn"
# vgg11's conv widths by stage (between max-pools), and the index in ``features`` of each conv's ReLU (with BN)
VGG11_WIDTHS = [[64], [128], [256, 256], [512, 512], [512, 512]]
VGG11_BN_RELUS = [2, 6, 10, 13, 17, 20, 24, 27]


SMALL_HEAD = dict(mlp_ratio=1 / 64)  # timm's ConvMlp 512 -> 64 -> 4096 instead of 512 -> 4096 -> 4096 (speed)


def _tv(batch_norm: bool = True) -> nn.Module:
    """torchvision's VGG-11 (``vgg11_bn``'s layers), with a 5-class linear head instead of the 120M-parameter MLP."""
    with torch.device("meta"):
        model = tv_vgg.VGG(tv_vgg.make_layers(tv_vgg.cfgs["A"], batch_norm=batch_norm))
    model.features = tv_vgg.make_layers(tv_vgg.cfgs["A"], batch_norm=batch_norm)
    model.classifier = nn.Linear(512 * 7 * 7, 5)
    return model


def _models():
    return {
        "timm": lambda: timm.create_model(ARCH, num_classes=5, **SMALL_HEAD),
        "torchvision": _tv,
    }


def _x(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_every_vgg():
    names = timm.list_models("se_plugin_vgg*")
    assert names == [f"se_plugin_{b}" for b in timm.list_models("vgg*")] and len(names) == 8
    assert set(names) <= set(timm.list_models(module="vgg"))
    assert timm.models.get_pretrained_cfg("se_plugin_vgg16_bn").architecture == "se_plugin_vgg16_bn"


def test_parameter_count_from_widths():
    """vgg16_bn: SE on each of the 13 convs' outputs."""
    widths = [64] * 2 + [128] * 2 + [256] * 3 + [512] * 3 + [512] * 3
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in widths]
    expected = sum(2 * c * h + h + c for c, h in zip(widths, hidden, strict=True))
    with torch.device("meta"):
        base, ours = timm.create_model("vgg16_bn"), timm.create_model("se_plugin_vgg16_bn")
        tv_base = torchvision.models.vgg16_bn()
        tv = add_se(torchvision.models.vgg16_bn())
    assert expected == 231_824 and count_params(ours) - count_params(base) == expected
    assert count_params(base) == 138_365_992
    assert count_params(tv) - count_params(tv_base) == expected
    assert [se.channels for se in se_modules(ours).values()] == widths


@pytest.mark.parametrize("kind", list(_models()))
def test_identity_init_keeps_outputs_and_keys(kind):
    torch.manual_seed(0)
    model = randomize_norm_stats(_models()[kind]()).eval()
    # position=None: the family's own, "post"; gate exactly 1: x * 1 == x
    state, before_state = assert_identity_init(model, _x())
    assert {k for k in state if k not in before_state} == {
        f"features.{i}.se.{p}" for i in VGG11_BN_RELUS for p in SE_KEYS
    }
    assert [type(model.features[i]) for i in VGG11_BN_RELUS] == [SEReLU] * 8
    # nothing else: the head's ReLUs (timm's ConvMlp, torchvision's classifier) stay plain
    assert sum(isinstance(m, SEReLU) for m in model.modules()) == 8


def test_se_sits_after_each_conv_relu():
    torch.manual_seed(0)
    model = random_se(add_se(_tv(), init="random"))
    features = model.features
    x = torch.randn(1, 64, 16, 16)
    with torch.no_grad():
        unit = features[4:7]  # conv, BN, SE-ReLU of stage 2
        expected = features[6].se(torch.relu(features[5](features[4](x))))
        torch.testing.assert_close(unit(x), expected, rtol=0, atol=0)
        assert features[6].se.channels == 128
        gate = features[6].se.gate(torch.relu(features[5](features[4](x))))
        assert not torch.allclose(gate, torch.ones_like(gate))


def test_plain_vgg_and_smp_and_other_relus():
    plain = add_se(_tv(batch_norm=False))  # no BN: the ReLU right after each conv
    assert sorted(int(n.split(".")[1]) for n in se_modules(plain)) == [1, 4, 7, 9, 12, 14, 17, 19]
    native = se_unet("vgg11_bn", 2, se_decoder=False)  # smp's VGG encoder is torchvision's VGG
    assert sorted(se_modules(native)) == sorted(f"encoder.features.{i}.se" for i in VGG11_BN_RELUS)
    resnet = add_se(torchvision.models.resnet18())
    assert not any(isinstance(m, SEReLU) for m in resnet.modules())  # ReLU is not a registered block
    with pytest.raises(ValueError, match="Sequential has no supported residual block"):
        add_se(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()))


def test_options_and_errors():
    model = timm.create_model(f"se_plugin_{ARCH}", se_stages=(3, 5), se_reduction=8, **SMALL_HEAD)
    assert sorted(int(n.split(".")[1]) for n in se_modules(model)) == [10, 13, 24, 27]
    assert model.features[10].se.hidden_channels == make_divisible(256 / 8, 8, round_limit=0.0)
    by_stage = add_se(_tv(), stages=(1, 2))
    assert sorted(se_modules(by_stage)) == ["features.2.se", "features.6.se"]
    with pytest.raises(ValueError, match=r"position 'standard' is not supported by timm/torchvision VGG .*\('post',\)"):
        add_se(timm.create_model(ARCH, **SMALL_HEAD), position="standard")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.5"):
        add_se(timm.create_model(ARCH, **SMALL_HEAD), stages=(6,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(add_se(_tv()))
    # timm's features_only flattens VGG: the sites cannot be told any more; the twin inserts SE before that
    with pytest.raises(ValueError, match="FeatureListNet has no supported"):
        add_se(timm.create_model(ARCH, features_only=True, **SMALL_HEAD))
    with pytest.raises(ValueError, match="feature_cls='hook' is not supported"):
        timm.create_model(f"se_plugin_{ARCH}", features_only=True, feature_cls="hook", **SMALL_HEAD)


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path, **SMALL_HEAD)
    state, ours_state = torch.load(tmp_path / "base.pth", weights_only=True), ours.state_dict()
    assert {k for k in ours_state if k not in state} == {
        f"features.{i}.se.{p}" for i in VGG11_BN_RELUS for p in SE_KEYS
    }
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert torch.equal(ours(_x()), base(_x()))
        for feature_cls in ("list", "dict", "getter"):
            feats = timm.create_model(f"se_plugin_{ARCH}", features_only=True, feature_cls=feature_cls, **kwargs)
            base_feats = timm.create_model(ARCH, features_only=True, feature_cls=feature_cls, **kwargs)
            assert len(se_modules(feats)) == 8 and feats.feature_info.reduction() == [1, 2, 4, 8, 16, 32]
            got, want = feats.eval()(_x()), base_feats.eval()(_x())
            got, want = (list(got.values()), list(want.values())) if feature_cls == "dict" else (got, want)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), feature_cls
        assert_intermediates_match(ours, base, _x())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "timm_features", "torchvision"])
def test_torchscript_and_fx_match_eager(kind):
    torch.manual_seed(0)
    build = {
        **_models(),
        "timm_features": lambda: timm.create_model(
            f"se_plugin_{ARCH}", features_only=True, se_init="random", **SMALL_HEAD
        ),
    }[kind]
    model = random_se(add_se(build(), init="random") if kind != "timm_features" else build())
    assert_scripted_matches(model, _x())
    if kind != "torchvision":  # timm's ConvMlp head branches on the input size: FX through timm's tracer below
        return
    fx_matches_eager(model, _x())


def test_fx_features_and_export():
    fx = timm.create_model(f"se_plugin_{ARCH}", features_only=True, feature_cls="fx", **SMALL_HEAD)
    listed = random_se(timm.create_model(f"se_plugin_{ARCH}", features_only=True, **SMALL_HEAD))
    assert sum(".se.fc1.weight" in k for k in fx.state_dict()) == 8
    # the list wrapper flattens ``features.<i>`` into ``features_<i>``; the FX graph keeps the model's names
    fx.load_state_dict(
        {f"graph_module.{re.sub(r'^features_', 'features.', k)}": v for k, v in listed.state_dict().items()}
    )
    with torch.no_grad():
        assert all(same_ops_close(a, b) for a, b in zip(fx.eval()(_x()), listed(_x()), strict=True))
    model = random_se(add_se(_tv(), init="random"))
    exported = torch.export.export(model, (_x(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(_x()), model(_x()))


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    # VGG's six feature levels start at stride 1: the FPN takes strides 4..32 (levels 2..5)
    detector_trains_one_step(f"se_plugin_{ARCH}", 8, out_indices=(2, 3, 4, 5), backbone_kwargs=SMALL_HEAD)
    unet = unet_trains_one_step(f"tu-se_plugin_{ARCH}", 8, lr=0.01)
    assert has_se(unet.encoder)

"""SE in timm's HRNet: ``se_plugin_hrnet*``, SE in every residual block of every branch (timm ResNet blocks).

HRNet's blocks are timm's ResNet ``BasicBlock``/``Bottleneck``, so SE sits where SE-ResNet has it; the stages come
from HRNet's names (``layer1``, ``stageN.<module>.branches.<b>.<i>``; the head's ``incre_modules`` count as 4).
"""

import collections

import pytest
import timm
import torch
from timm.layers import make_divisible

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules
from se_plugins.insert.timm_resnet import stage_from_resnet_or_hrnet_name
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    SE_KEYS,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    compile_matches_eager,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    pretrained_from_base,
    se_params,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

ARCH = "hrnet_w18_small"
# hrnet_w18_small's residual blocks by stage: (count, SE channels) from timm's cfg (BASIC: width, BOTTLENECK: 4x)
BLOCKS = {
    1: [(1, 4 * 32)],  # layer1: one Bottleneck
    2: [(2, 16), (2, 32)],  # one module, two branches of two BasicBlocks
    3: [(2, 16), (2, 32), (2, 64)],
    4: [(2, 16), (2, 32), (2, 64), (2, 128)] + [(1, 4 * c) for c in (32, 64, 128, 256)],  # + the head's incre blocks
}


def test_registry_and_parameter_counts():
    bases = [n for n in timm.list_models(module="hrnet") if not n.startswith("se_plugin_")]
    names = timm.list_models("se_plugin_hrnet*")
    assert sorted(names) == sorted(f"se_plugin_{b}" for b in bases) and len(names) == 11
    assert set(names) <= set(timm.list_models(module="hrnet"))
    with torch.device("meta"):
        base, ours = timm.create_model(ARCH), timm.create_model(f"se_plugin_{ARCH}")
    expected = sum(n * se_params(c) for blocks in BLOCKS.values() for n, c in blocks)
    assert count_params(ours) - count_params(base) == expected == 192_048
    assert count_params(base) == 13_187_464


def test_stage_names_for_resnets_and_hrnet():
    names = {
        "layer3.1": 3, "body.layer2.0": 2, "encoder.model.layer4.2": 4, "layer1_0": 1,  # ResNets (and wrappers)
        "stage2.0.branches.1.0": 2, "model.stage4.2.branches.3.1": 4, "incre_modules.2.0": 4,  # HRNet
        "stage2.0.fuse_layers.1.0": None, "stages.1.blocks.0": None, "downsamp_modules.0": None,
    }  # fmt: skip
    assert {n: stage_from_resnet_or_hrnet_name(n) for n in names} == names
    model = timm.create_model(f"se_plugin_{ARCH}")
    stages = collections.Counter(stage_from_resnet_or_hrnet_name(n.removesuffix(".se")) for n in se_modules(model))
    assert stages == {s: sum(n for n, _ in blocks) for s, blocks in BLOCKS.items()}


def test_identity_init_keeps_outputs_and_keys():
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(ARCH, num_classes=5)).eval()
    state, before_state = assert_identity_init(model, batch(), exact=False)
    new = set(state) - set(before_state)
    assert {k for k in new if k.startswith("stage3.0.branches.2.1.")} == {
        f"stage3.0.branches.2.1.se.{k}" for k in SE_KEYS
    }
    assert len(new) == len(SE_KEYS) * 23


def test_options_and_errors():
    model = add_se(timm.create_model(ARCH), stages=(1, 2), reduction=8)
    assert sorted(se_modules(model)) == ["layer1.0.se"] + [
        f"stage2.0.branches.{b}.{i}.se" for b in (0, 1) for i in (0, 1)
    ]
    assert model.stage2[0].branches[1][0].se.hidden_channels == make_divisible(32 / 8, 8)
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(timm.create_model(ARCH), stages=(0,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model(f"se_plugin_{ARCH}"))


def test_pretrained_base_weights_and_features(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    x = batch()
    with torch.no_grad():
        assert same_ops_close(ours(x), base(x))
        assert_intermediates_match(ours, base, x, exact=False)
        # timm's own HighResolutionNetFeatures (loaded non-strictly: no classifier), and a generic wrapper
        for feature_kwargs in (dict(), dict(feature_cls="getter")):
            feats = timm.create_model(f"se_plugin_{ARCH}", features_only=True, **feature_kwargs, **kwargs).eval()
            base_feats = timm.create_model(ARCH, features_only=True, **feature_kwargs, **kwargs).eval()
            feats_state = feats.state_dict()
            base_keys = set(base_feats.state_dict())
            assert all(torch.equal(feats_state[k], v) for k, v in base_feats.state_dict().items())
            assert all(".se." in k for k in set(feats_state) - base_keys) and len(se_modules(feats)) == 23
            assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
            assert all(same_ops_close(a, b) for a, b in zip(feats(x), base_feats(x), strict=True))


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random"))
    x = batch()
    # timm's HRNet does not script (its SequentialList takes a list; timm's tests exclude hrnet* from TorchScript):
    # the SE blocks do, in each branch
    with pytest.raises(RuntimeError, match="SequentialList"):
        torch.jit.script(timm.create_model(ARCH))
    for block in (model.layer1[0], model.stage4[0].branches[3][1], model.incre_modules[0][0]):
        assert_scripted_matches(block, torch.randn(2, block.conv1.in_channels, 8, 8))
    fx_matches_eager(model, x)
    compile_matches_eager(model, x)


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 23)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 23)

import copy

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

import se_plugins
from se_plugins import SE_POSITIONS, add_se, has_se, se_modules, set_se_fused
from tests.conftest import randomize_norm_stats


def _models():
    """Small models covering every supported block family (timm/torchvision, basic/bottleneck, frozen BN, smp)."""
    return {
        "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=10),
        "timm_resnet26d": lambda: timm.create_model("resnet26d", num_classes=10),
        "timm_resnet10t": lambda: timm.create_model("resnet10t", num_classes=10),
        "timm_resnext50_32x4d": lambda: timm.create_model("resnext50_32x4d", num_classes=10),
        "tv_resnet18": lambda: torchvision.models.resnet18(num_classes=10),
        "tv_resnet50_frozen_bn": lambda: resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
        ),
        "smp_unet_resnet34": lambda: smp.Unet("resnet34", encoder_weights=None, classes=3),
    }


def _out(model, x):
    out = model(x)
    if isinstance(out, dict):
        return torch.cat([v.flatten() for v in out.values()])
    return out


@pytest.mark.parametrize("position", SE_POSITIONS)
@pytest.mark.parametrize("name", list(_models()))
def test_identity_init_preserves_outputs(name, position, rng_input):
    torch.manual_seed(0)
    model = randomize_norm_stats(_models()[name]()).eval()
    x = rng_input(2, 3, 64, 64)
    with torch.no_grad():
        before = _out(model, x)
        add_se(model, position=position, init="identity")
        after = _out(model, x)
    assert has_se(model)
    assert (after - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(_models()))
def test_keys_unchanged_and_new_params_under_se(name):
    torch.manual_seed(0)
    model = _models()[name]()
    before = copy.deepcopy(model.state_dict())
    add_se(model)
    after = model.state_dict()
    assert set(before) <= set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    new = set(after) - set(before)
    assert new and all(".se." in k for k in new)


def test_random_init_changes_outputs(rng_input):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model("resnet18")).eval()
    x = rng_input(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        add_se(model, init="random")
        assert not torch.allclose(model(x), before, atol=1e-3)
    assert all(m.gate_gain.item() == 1.0 for m in se_modules(model).values())


@pytest.mark.parametrize("stages", [(1,), (3, 4), (2, 4), (1, 2, 3, 4)])
def test_stages(stages):
    model = add_se(timm.create_model("resnet18"), stages=stages)
    with_se = {int(name.split(".")[0][-1]) for name in se_modules(model)}
    assert with_se == set(stages)
    assert len(se_modules(model)) == 2 * len(stages)  # resnet18: 2 blocks a stage


def _tv_block(position, seed=0):
    torch.manual_seed(seed)
    down = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 1, stride=2, bias=False), torch.nn.BatchNorm2d(64))
    block = torchvision.models.resnet.Bottleneck(32, 16, stride=2, downsample=down)
    randomize_norm_stats(block).eval()
    ref = copy.deepcopy(block)
    wrapper = torch.nn.Sequential()
    wrapper.add_module("layer1", torch.nn.Sequential(block))
    add_se(wrapper, position=position, init="random", reduction=4)
    return block, ref


def _branch(b, x):
    x = b.relu(b.bn1(b.conv1(x)))
    x = b.relu(b.bn2(b.conv2(x)))
    return b.bn3(b.conv3(x))


@pytest.mark.parametrize("position", SE_POSITIONS)
def test_positions_follow_the_paper(position, rng_input):
    """Each position against a reference written from the paper's Fig. 5."""
    block, ref = _tv_block(position)
    se = block.se
    x = rng_input(2, 32, 16, 16)
    with torch.no_grad():
        shortcut = ref.downsample(x)
        expected = {
            "standard": lambda: torch.relu(se(_branch(ref, x)) + shortcut),
            "pre": lambda: torch.relu(_branch(ref, se(x)) + shortcut),
            "post": lambda: se(torch.relu(_branch(ref, x) + shortcut)),
            "identity": lambda: torch.relu(_branch(ref, x) + se(shortcut)),
        }[position]()
        torch.testing.assert_close(block(x), expected)
    assert se.channels == (32 if position == "pre" else 64)


def test_fused_equals_plain_forward_and_backward(rng_input):
    torch.manual_seed(0)
    fused = add_se(timm.create_model("resnet18", num_classes=5), init="random")
    plain = set_se_fused(copy.deepcopy(fused), False)
    x = rng_input(2, 3, 64, 64)
    for model in (fused, plain):
        model.train()
        model(x).square().mean().backward()
    torch.testing.assert_close(fused(x), plain(x))
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_errors():
    with pytest.raises(ValueError, match="no supported residual block.*supported: .*timm ResNet Bottleneck"):
        add_se(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))
    model = add_se(timm.create_model("resnet18"))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(model)
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model("seresnet50"))
    with pytest.raises(ValueError, match="position"):
        add_se(timm.create_model("resnet18"), position="middle")
    with pytest.raises(ValueError, match="init"):
        add_se(timm.create_model("resnet18"), init="zeros")
    for bad in [(0,), (5,), ()]:
        with pytest.raises(ValueError, match="stages"):
            add_se(timm.create_model("resnet18"), stages=bad)


def test_se_trains_in_frozen_stages():
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=0)
    add_se(backbone)
    se_params = [p for n, p in backbone.named_parameters() if ".se." in n]
    assert se_params and all(p.requires_grad for p in se_params)
    assert not any(p.requires_grad for n, p in backbone.body.named_parameters() if ".se." not in n)


def test_public_api():
    assert se_plugins.SqueezeExcite is se_plugins.layers.SqueezeExcite
    assert callable(se_plugins.add_se)

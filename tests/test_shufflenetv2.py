"""SE in torchvision's ShuffleNetV2: on each unit's ``branch2`` output (after its last BN + ReLU), before the concat
and the channel shuffle, as in "ShuffleNet v2 with SE" (Ma et al. 2018, Table 8)."""

import importlib

import pytest
import torch
import torchvision
from timm.layers import make_divisible
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from se_plugins import add_se, se_modules
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import assert_identity_init, batch, count_params
from tests.test_torchscript import assert_scripted_matches

tv_shufflenet = importlib.import_module("torchvision.models.shufflenetv2")
# branch2 widths (half of each stage's output) of shufflenet_v2_x1_0's 16 units: stage2 (4), stage3 (8), stage4 (4)
X1_0_WIDTHS = [58] * 4 + [116] * 8 + [232] * 4
SE_SUFFIXES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")


def test_parameter_count_from_widths():
    with torch.device("meta"):
        base, ours = torchvision.models.shufflenet_v2_x1_0(), add_se(torchvision.models.shufflenet_v2_x1_0())
    assert [se.channels for se in se_modules(ours).values()] == X1_0_WIDTHS
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in X1_0_WIDTHS]
    expected = sum(2 * c * h + h + c for c, h in zip(X1_0_WIDTHS, hidden, strict=True))
    assert expected == 50_504 and count_params(base) == 2_278_604
    assert count_params(ours) - count_params(base) == expected


@pytest.mark.parametrize("width", ["x0_5", "x1_0"])
def test_identity_init_keeps_outputs_and_keys(width):
    torch.manual_seed(0)
    model = randomize_norm_stats(getattr(torchvision.models, f"shufflenet_v2_{width}")(num_classes=5)).eval()
    # every gate exactly 1: x * 1 == x in IEEE
    state, before_state = assert_identity_init(model, batch())
    assert {k for k in state if k.startswith("stage3.0.se.")} == {f"stage3.0.se.{s}" for s in SE_SUFFIXES}
    assert len(set(state) - set(before_state)) == 5 * 16


def test_se_sits_on_branch2_before_concat_and_shuffle():
    torch.manual_seed(0)
    model = random_se(add_se(torchvision.models.shufflenet_v2_x0_5(), init="random"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        block, x = model.stage3[0], torch.randn(1, 48, 16, 16, generator=g)  # stride 2: both branches see x
        expected = torch.cat((block.branch1(x), block.se(block.branch2(x))), 1)
        assert torch.equal(block(x), tv_shufflenet.channel_shuffle(expected, 2))
        block, x = model.stage3[1], torch.randn(1, 96, 8, 8, generator=g)  # stride 1: the identity half is not gated
        x1, x2 = x.chunk(2, dim=1)
        assert torch.equal(block(x), tv_shufflenet.channel_shuffle(torch.cat((x1, block.se(block.branch2(x2))), 1), 2))
        assert block.se.gate(block.branch2(x2)).std() > 0.01


def test_options_and_errors():
    model = add_se(torchvision.models.shufflenet_v2_x0_5(), stages=(2, 4), reduction=4)
    assert sorted(se_modules(model)) == [f"stage2.{i}.se" for i in range(4)] + [f"stage4.{i}.se" for i in range(4)]
    assert model.stage4[0].se.hidden_channels == make_divisible(96 / 4, 8, round_limit=0.0)
    with pytest.raises(ValueError, match=r"position 'post' is not supported by torchvision ShuffleNetV2 "):
        add_se(torchvision.models.shufflenet_v2_x0_5(), position="post")
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(torchvision.models.shufflenet_v2_x0_5(), stages=(5,))
    with pytest.raises(ValueError, match="already has SE"):
        add_se(model)


@pytest.mark.slow
def test_torchscript_fx_and_export_match_eager():
    torch.manual_seed(0)
    model = random_se(add_se(torchvision.models.shufflenet_v2_x0_5(num_classes=5), init="random"))
    assert_scripted_matches(model, batch())
    graph = torch.fx.symbolic_trace(model)
    exported = torch.export.export(model, (batch(),))
    with torch.no_grad():
        assert same_ops_close(graph(batch()), model(batch()))
        assert same_ops_close(exported.module()(batch(1)), model(batch(1)))
    graph(batch()).sum().backward()
    assert all(p.grad is not None for n, p in graph.named_parameters() if ".se." in n)


@pytest.mark.slow
def test_faster_rcnn_on_torchvision_fpn_trains_one_step():
    """No timm twin (timm has no ShuffleNet): the SE model under torchvision's own ``BackboneWithFPN``."""
    torch.manual_seed(0)
    body = add_se(torchvision.models.shufflenet_v2_x0_5(), init="random")
    backbone = BackboneWithFPN(body, {"stage2": "0", "stage3": "1", "stage4": "2"}, [48, 96, 192], out_channels=32)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)
    detector = FasterRCNN(backbone, num_classes=3, min_size=64, max_size=96, rpn_anchor_generator=anchors,
                          rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20)  # fmt: skip
    assert len(se_modules(detector)) == 16
    images = [torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])}]
    loss = sum(detector.train()(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in detector.named_parameters() if ".se." in n)

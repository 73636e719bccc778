"""SE on a module's output (families without a residual add): a user's own module through SEOutputBlock."""

import pytest
import torch
from torch import nn

import se_plugins
from se_plugins import SEOutputBlock, add_se, register_se_block
from se_plugins.insert.output_block import OUTPUT_POSITIONS
from tests.conftest import same_ops_close


class ConvBNAct(nn.Module):
    """A non-residual module: conv, norm, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SEConvBNAct(SEOutputBlock, ConvBNAct):
    pass


register_se_block(
    ConvBNAct,
    SEConvBNAct,
    channels=lambda block, position: block.conv.out_channels,
    positions=OUTPUT_POSITIONS,
    stage=lambda name: int(name.split(".")[0]) + 1,
    num_stages=2,
    description="test ConvBNAct",
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(ConvBNAct(3, 16), ConvBNAct(16, 32)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_identity_insertion_keeps_outputs_and_keys():
    net = _net()
    x = torch.randn(2, 3, 12, 12)
    expected = net(x)
    keys = set(net.state_dict())
    add_se(net, reduction=4)  # position=None: the family's own ("post")
    assert [type(m).__name__ for m in net] == ["SEConvBNAct", "SEConvBNAct"]
    assert {m.se_position for m in net} == {"post"}
    assert keys < set(net.state_dict())
    assert {k for k in net.state_dict() if k not in keys} == {
        f"{i}.se.{p}" for i in (0, 1) for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")
    }
    assert torch.equal(net(x), expected)  # gate exactly 1: x * 1 == x in IEEE


def test_random_init_scales_the_module_output():
    net = add_se(_net(), reduction=4, init="random")
    x = torch.randn(2, 3, 12, 12)
    block = net[0]
    plain = ConvBNAct.forward(block, x)
    gate = block.se.gate(plain)
    torch.testing.assert_close(block(x), plain * gate)
    assert not torch.allclose(gate, torch.ones_like(gate))


def test_residual_positions_are_rejected_with_one_line():
    with pytest.raises(ValueError, match=r"position 'standard' is not supported by test ConvBNAct .*\('post',\)"):
        add_se(_net(), position="standard")


def test_stages_select_modules():
    net = add_se(_net(), stages=[2])
    assert not isinstance(net[0], SEOutputBlock) and isinstance(net[1], SEOutputBlock)


def test_script_and_fx_match_eager():
    net = add_se(_net(), reduction=4, init="random")
    x = torch.randn(2, 3, 12, 12)
    expected = net(x)
    assert same_ops_close(torch.jit.script(net)(x), expected)  # the same ops in the same order
    assert same_ops_close(torch.fx.symbolic_trace(net)(x), expected)


def test_pickle_and_compile(tmp_path):
    net = add_se(_net(), reduction=4, init="random")
    x = torch.randn(2, 3, 12, 12)
    path = tmp_path / "net.pt"
    torch.save(net, path)
    torch.testing.assert_close(torch.load(path, weights_only=False)(x), net(x), rtol=0, atol=0)
    exported = torch.export.export(net, (x,))
    assert same_ops_close(exported.module()(x), net(x))


def test_public_name():
    assert se_plugins.SEOutputBlock is SEOutputBlock

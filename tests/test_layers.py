import pytest
import torch
from timm.layers import SEModule

from se_plugins import SqueezeExcite


@pytest.mark.parametrize("channels", [64, 128, 200, 256, 1024, 2048])
def test_hidden_width_and_keys_match_timm(channels):
    ours, theirs = SqueezeExcite(channels), SEModule(channels, rd_ratio=1 / 16)
    assert ours.hidden_channels == theirs.fc1.out_channels
    assert set(ours.state_dict()) == set(theirs.state_dict()) | {"gate_gain"}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_timm_weights_load_strictly_and_give_same_output(rng_input):
    theirs = SEModule(64, rd_ratio=1 / 16)
    ours = SqueezeExcite(64, init="identity")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.gate_gain.item() == 1.0  # timm weights are the paper's plain sigmoid gate
    x = rng_input(2, 64, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_identity_init_is_exact_and_learns(rng_input):
    se = SqueezeExcite(32, reduction=4, init="identity")
    x = rng_input(3, 32, 6, 6)
    assert torch.equal(se(x), x)
    assert torch.equal(se.gate(x), torch.ones(3, 32, 1, 1))
    # the gate is not saturated: one SGD step on a loss that wants smaller outputs moves it
    opt = torch.optim.SGD(se.parameters(), lr=0.1)
    se(x).pow(2).mean().backward()
    assert se.fc2.bias.grad.abs().min() > 0 and se.fc2.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(se(x), x)


def test_random_init_is_the_paper_gate(rng_input):
    torch.manual_seed(0)
    se = SqueezeExcite(256, init="random")
    assert se.gate_gain.item() == 1.0
    gate = se.gate(rng_input(4, 256, 7, 7))
    assert ((gate > 0) & (gate < 1)).all()
    assert abs(gate.mean().item() - 0.5) < 0.1
    # reference: mean-pool -> fc1 -> relu -> fc2 -> sigmoid -> scale
    x = rng_input(2, 256, 3, 3, seed=1)
    s = x.mean((2, 3))
    s = torch.relu(s @ se.fc1.weight.flatten(1).T + se.fc1.bias) @ se.fc2.weight.flatten(1).T + se.fc2.bias
    torch.testing.assert_close(se(x), x * torch.sigmoid(s)[:, :, None, None])


def test_gate_gain_round_trips_in_own_state_dict():
    a, b = SqueezeExcite(64, init="identity"), SqueezeExcite(64, init="random")
    b.load_state_dict(a.state_dict())
    assert b.gate_gain.item() == 2.0


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        SqueezeExcite(64, reduction=0)
    with pytest.raises(ValueError, match="init"):
        SqueezeExcite(64, init="zeros")

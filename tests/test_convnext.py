"""SE in timm's ConvNeXt V1/V2: ``se_plugin_convnext*`` twins, SE after the layer scale, before the add (NCHW)."""

import copy
import re

import pytest
import timm
import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules, set_se_fused
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    SE_KEYS,
    assert_features_match_base,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    compile_matches_eager,
    count_params,
    detector_trains_one_step,
    fx_features_se_count,
    fx_matches_eager,
    pretrained_from_base,
    se_params,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

ARCH = "convnext_atto"  # depths (2, 2, 6, 2), dims (40, 80, 160, 320)
V2 = "convnextv2_atto"


def _trained_like(model: nn.Module) -> nn.Module:
    """Norms and layer scales of a trained model (timm initialises gamma to 1e-6, which hides every branch)."""
    randomize_norm_stats(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or "grn" in name:
                p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.5)
    return model


def test_registry_lists_every_v1_and_v2_arch():
    bases = [
        n for n in timm.list_models(module="convnext", exclude_filters=["test_*"]) if not n.startswith("se_plugin")
    ]
    names = timm.list_models("se_plugin_*", module="convnext")
    assert set(names) == {f"se_plugin_{n}" for n in bases} and len(names) == 28
    assert {"se_plugin_convnext_atto", "se_plugin_convnextv2_atto", "se_plugin_convnextv2_huge"} <= set(names)


def test_parameter_count_from_widths():
    with torch.device("meta"):
        base, ours = timm.create_model(ARCH), timm.create_model(f"se_plugin_{ARCH}")
    widths = [40] * 2 + [80] * 2 + [160] * 6 + [320] * 2  # one SE per block, on the block's width
    assert count_params(ours) - count_params(base) == sum(se_params(c) for c in widths) == 51_888
    assert count_params(base) == 3_695_520
    assert [se.channels for se in se_modules(ours).values()] == widths


@pytest.mark.parametrize("arch", [ARCH, V2])
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = _trained_like(timm.create_model(arch, num_classes=5)).eval()
    # the fused add is one addcmul instead of mul + add
    state, before_state = assert_identity_init(model, batch(), exact=False)
    new = {k for k in set(state) - set(before_state) if k.startswith("stages.0.blocks.0.")}
    assert new == {f"stages.0.blocks.0.se.{p}" for p in SE_KEYS}


def _branch(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ConvNeXt branch composed by hand from timm's block: dwconv, norm, MLP (channels-last or 1x1), gamma."""
    x = b.conv_dw(x)
    if b.use_conv_mlp:
        x = b.mlp(b.norm(x))
    else:
        x = b.mlp(b.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    return x if b.gamma is None else x * b.gamma.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("conv_mlp", [True, False], ids=["conv_mlp", "channels_last_mlp"])
@pytest.mark.parametrize("position", ["standard", "pre", "post", "identity"])
def test_positions_against_the_block_composed_by_hand(position, conv_mlp):
    torch.manual_seed(0)
    model = _trained_like(timm.create_model(ARCH, conv_mlp=conv_mlp))
    block = random_se(add_se(model, position=position, init="random", fused=False)).stages[1].blocks[1]
    seen = []
    block.se.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x = torch.randn(2, 80, 8, 8)
    expected = {
        # branch + shortcut, in timm's order (the sum's memory format, so SE's pooling order, follows the first)
        "standard": lambda: block.se(_branch(block, x)) + x,
        "pre": lambda: _branch(block, block.se(x)) + x,
        "post": lambda: block.se(_branch(block, x) + x),
        "identity": lambda: _branch(block, x) + block.se(x),
    }[position]
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected(), rtol=0, atol=0)
    assert seen[0] == (2, 80, 8, 8)  # SE sees NCHW, also behind the channels-last MLP


def _torchvision_convnext() -> nn.Module:
    """A small torchvision ConvNeXt (the CNBlock of convnext_tiny, narrower) with trained-like norms and scales."""
    cfgs = [CNBlockConfig(16, 32, 2), CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 2), CNBlockConfig(128, None, 2)]
    model = randomize_norm_stats(ConvNeXt(cfgs, stochastic_depth_prob=0.1, num_classes=5))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(len(name))) + 0.5)
    return model.eval()


@pytest.mark.parametrize("position", ["standard", "pre", "post", "identity"])
def test_torchvision_convnext(position):
    torch.manual_seed(0)
    model = _torchvision_convnext()
    before_state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        before = model(batch())
        add_se(model, position=position)
        assert same_ops_close(model(batch()), before)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    assert {k for k in set(state) - set(before_state) if k.startswith("features.3.1.")} == {
        f"features.3.1.se.{p}" for p in SE_KEYS
    }
    assert [se.channels for se in se_modules(model).values()] == [16, 16, 32, 32, 64, 64, 128, 128]
    random_se(model)
    block = model.features[3][1]
    x = torch.randn(2, 32, 8, 8)
    branch = lambda x: block.layer_scale * block.block(x)  # noqa: E731
    expected = {
        "standard": lambda: block.se(branch(x)) + x,
        "pre": lambda: branch(block.se(x)) + x,
        "post": lambda: block.se(branch(x) + x),
        "identity": lambda: branch(x) + block.se(x),
    }[position]
    with torch.no_grad():
        assert same_ops_close(block(x), expected())  # the fused add is one addcmul
        set_se_fused(model, False)
        torch.testing.assert_close(block(x), expected(), rtol=0, atol=0)
    assert sorted(se_modules(add_se(_torchvision_convnext(), stages=(2,)))) == ["features.3.0.se", "features.3.1.se"]


@pytest.mark.slow
def test_torchvision_convnext_torchscript_and_fx():
    torch.manual_seed(0)
    model = random_se(add_se(_torchvision_convnext(), init="random"))
    assert_scripted_matches(model, batch())
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert same_ops_close(graph(batch()), model(batch()))


def test_fused_equals_plain_forward_and_backward():
    torch.manual_seed(0)
    model = _trained_like(timm.create_model(f"se_plugin_{V2}", se_init="random", drop_path_rate=0.0))
    random_se(model)
    plain = copy.deepcopy(model)
    set_se_fused(plain, False)
    with torch.no_grad():
        assert same_ops_close(model(batch()), plain(batch()))
    model.train()(batch()).sum().backward()
    plain.train()(batch()).sum().backward()
    for (name, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert same_ops_close(a.grad, b.grad), name


def test_options_and_errors():
    model = timm.create_model(f"se_plugin_{ARCH}", se_stages=(4,), se_reduction=8, se_position="post")
    assert sorted(se_modules(model)) == ["stages.3.blocks.0.se", "stages.3.blocks.1.se"]
    assert model.stages[3].blocks[0].se.hidden_channels == 40 and model.stages[3].blocks[0].se_position == "post"
    with pytest.raises(ValueError, match=r"position must be one of"):
        add_se(timm.create_model(ARCH), position="after_dwconv")
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model(f"se_plugin_{ARCH}"))
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.4"):
        add_se(timm.create_model(ARCH), stages=(5,))


@pytest.mark.parametrize("arch", [ARCH, V2])
def test_pretrained_base_weights_through_timm(arch, tmp_path):
    base, ours, kwargs = pretrained_from_base(arch, tmp_path, prepare=_trained_like)
    with torch.no_grad():
        assert same_ops_close(ours(batch()), base(batch()))
        assert_features_match_base(arch, [4, 8, 16, 32], exact=False, **kwargs)
        assert_intermediates_match(ours, base, batch(), exact=False)


def _to_facebook_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ConvNeXt keys -> the original (facebookresearch) checkpoint's, which timm's checkpoint filter remaps."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.fc.", "head.")
        out[k.replace("head.norm.", "norm.")] = v
    return out


def test_timm_checkpoint_filter_runs_before_ours(tmp_path):
    # timm's ConvNeXt builder fixes its own filter (original checkpoints -> timm keys); the twin composes it with
    # the SE insertion, so an original-format checkpoint loads strictly into the twin
    torch.manual_seed(0)
    base = _trained_like(timm.create_model(ARCH)).eval()
    torch.save({"model": _to_facebook_keys(base.state_dict())}, tmp_path / "fb.pth")
    overlay = dict(file=str(tmp_path / "fb.pth"))
    ours = timm.create_model(f"se_plugin_{ARCH}", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    state = ours.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items())
    with torch.no_grad():
        assert same_ops_close(ours(batch()), base(batch()))


@pytest.mark.slow
def test_torchscript_fx_and_compile_match_eager():
    torch.manual_seed(0)
    model = random_se(_trained_like(timm.create_model(f"se_plugin_{ARCH}", num_classes=5, se_init="random")))
    x = batch()
    assert_scripted_matches(model, x)
    assert_scripted_matches(random_se(timm.create_model(f"se_plugin_{V2}", features_only=True, se_init="random")), x)
    fx_matches_eager(model, x)
    compile_matches_eager(model, x)
    assert fx_features_se_count(f"se_plugin_{ARCH}") == 12


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    # ConvNeXt has four feature levels (strides 4..32), not the default's five: the FPN takes levels 1..3
    detector_trains_one_step(f"se_plugin_{ARCH}", 12, out_indices=(1, 2, 3))
    # ConvNeXt's features start at stride 4: smp's timm encoder adds the stride-2 level itself
    unet_trains_one_step(f"tu-se_plugin_{V2}", 12)

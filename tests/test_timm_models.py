import pytest
import timm
import torch

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import has_se, se_modules, set_se_fused
from se_plugins.models.resnet import base_architectures
from tests.conftest import randomize_norm_stats, rounding_tolerance

X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))


def _outputs(model, x=X):
    with torch.no_grad():
        out = model.eval()(x)
    return out if isinstance(out, list | tuple) else [out]


def _assert_same(a, b, atol=1e-5):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.shape == v.shape
        assert (u - v).abs().max().item() <= atol


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A resnet50 checkpoint on disk, standing in for downloaded ImageNet weights."""
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model("resnet50"))
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path


def test_registry_covers_the_resnet_family():
    names = timm.list_models("se_plugin_*", module="resnet")
    assert names == sorted(f"se_plugin_{b}" for b in base_architectures()) or set(names) == {
        f"se_plugin_{b}" for b in base_architectures()
    }
    for expected in ["resnet18", "resnet50", "resnet50d", "resnet101", "resnet200d", "resnext50_32x4d",
                     "resnext101_32x8d", "wide_resnet50_2", "resnet26t", "resnet10t", "resnetaa50d"]:
        assert f"se_plugin_{expected}" in names
    for has_attention in ["seresnet50", "ecaresnet50d", "ecaresnext26t_32x4d", "senet154", "resnetrs50"]:
        assert f"se_plugin_{has_attention}" not in names
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.architecture == name


@pytest.mark.slow  # builds every se_plugin_* arch (260, on the meta device)
def test_every_arch_builds_with_se():
    for name in timm.list_models("se_plugin_*"):
        with torch.device("meta"):
            model = timm.create_model(name)
        assert has_se(model), name


def test_paper_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(timm.create_model("resnet50")) == 25_557_032
    assert count(timm.create_model("se_plugin_resnet50")) == 28_088_024  # SE-ResNet-50: 28.09M


def test_seresnet50_weights_load_strictly_with_identical_outputs():
    torch.manual_seed(0)
    reference = randomize_norm_stats(timm.create_model("seresnet50"))
    ours = timm.create_model("se_plugin_resnet50")
    ours.load_state_dict(reference.state_dict(), strict=True)
    # the fused path (gate FCs as matmuls, scale folded into the residual add) rounds differently in each of the 16
    # blocks, and that carries through resnet50's 53 conv layers (fan-in up to 3x3x512); the plain path is exact
    expected = _outputs(reference)
    tol = rounding_tolerance(expected, layers=53, fan_in=3 * 3 * 512)
    assert all((a - e).abs().max().item() <= tol for a, e in zip(_outputs(ours), expected, strict=True))
    set_se_fused(ours, False)
    _assert_same(_outputs(ours), _outputs(reference), atol=0)


def test_pretrained_base_weights_preserve_outputs(resnet50_file):
    base = timm.create_model("resnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(resnet50_file)))
    ours = timm.create_model(
        "se_plugin_resnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(resnet50_file))
    )
    assert has_se(ours) and all(m.gate_gain.item() == 2.0 for m in se_modules(ours).values())
    _assert_same(_outputs(ours), _outputs(base))
    # every base key came from the file
    state = torch.load(resnet50_file, weights_only=True)
    ours_state = ours.state_dict()
    assert all(torch.equal(ours_state[k], v) for k, v in state.items())
    assert ours.pretrained_cfg["architecture"] == "se_plugin_resnet50"


def test_pretrained_features_only_and_intermediates(resnet50_file):
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(resnet50_file)))
    base = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4), **kwargs)
    ours = timm.create_model("se_plugin_resnet50", features_only=True, out_indices=(1, 2, 3, 4), **kwargs)
    assert ours.feature_info.channels() == [256, 512, 1024, 2048]
    assert ours.feature_info.reduction() == [4, 8, 16, 32]
    assert has_se(ours)
    _assert_same(_outputs(ours), _outputs(base))

    full_base = timm.create_model("resnet50", **kwargs).eval()
    full_ours = timm.create_model("se_plugin_resnet50", **kwargs).eval()
    with torch.no_grad():
        final_b, inter_b = full_base.forward_intermediates(X)
        final_o, inter_o = full_ours.forward_intermediates(X)
    _assert_same([final_o, *inter_o], [final_b, *inter_b])


def test_pretrained_with_new_head_and_input_channels(resnet50_file):
    model = timm.create_model(
        "se_plugin_resnet50",
        pretrained=True,
        num_classes=7,
        in_chans=1,
        pretrained_cfg_overlay=dict(file=str(resnet50_file)),
    )
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    state = torch.load(resnet50_file, weights_only=True)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.layer2[0].conv2.weight, state["layer2.0.conv2.weight"])


def test_se_checkpoints_load_through_pretrained(tmp_path):
    """A fine-tuned se_plugin checkpoint and a timm seresnet checkpoint both load with their SE weights."""
    torch.manual_seed(0)
    tuned = randomize_norm_stats(timm.create_model("se_plugin_resnet18"))
    for m in se_modules(tuned).values():
        torch.nn.init.normal_(m.fc2.weight, std=0.1)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pth")
    loaded = timm.create_model(
        "se_plugin_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "tuned.pth"))
    )
    _assert_same(_outputs(loaded), _outputs(tuned), atol=0)

    seresnet = randomize_norm_stats(timm.create_model("seresnet50"))
    torch.save(seresnet.state_dict(), tmp_path / "seresnet50.pth")
    loaded = timm.create_model(
        "se_plugin_resnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "seresnet50.pth"))
    )
    expected = _outputs(seresnet)  # fused against timm's plain SEModule: rounding only, as above
    tol = rounding_tolerance(expected, layers=53, fan_in=3 * 3 * 512)
    assert all((a - e).abs().max().item() <= tol for a, e in zip(_outputs(loaded), expected, strict=True))


def test_se_options_reach_the_model():
    model = timm.create_model("se_plugin_resnet18", se_reduction=8, se_stages=(3, 4), se_position="post")
    ses = se_modules(model)
    assert sorted({name.split(".")[0] for name in ses}) == ["layer3", "layer4"]
    assert ses["layer3.0.se"].hidden_channels == 256 // 8
    assert model.layer3[0].se_position == "post"
    model = timm.create_model("se_plugin_resnet18", reduction=4, init="random")
    assert all(m.gate_gain.item() == 1.0 for m in se_modules(model).values())
    assert se_modules(model)["layer1.0.se"].hidden_channels == 16
    with pytest.raises(TypeError, match="given twice"):
        timm.create_model("se_plugin_resnet18", reduction=4, se_reduction=8)


def test_compile_and_export():
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model("se_plugin_resnet10t", num_classes=5, init="random")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), expected)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected)
    assert any("addcmul" in str(n.target) for n in exported.graph.nodes)  # the fused SE path is what runs

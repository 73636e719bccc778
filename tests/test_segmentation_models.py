"""U-Nets with SE (se_plugins.segmentation) and se_plugin_* timm encoders inside plain smp.Unet."""

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch
from timm.layers import make_divisible
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import SEPluginsError, add_se, has_se, se_modules
from se_plugins.insert import iter_residual_blocks
from se_plugins.segmentation import SEGMENTATION_MODELS, add_decoder_se, decoder_se_modules, se_unet, unet
from tests.conftest import randomize_norm_stats

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
REPO = Path(__file__).resolve().parents[1]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
def _out(model: nn.Module, x: torch.Tensor = X):
    return model.eval()(x)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))


def _copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Load all of ``src``'s tensors into ``dst`` (which may only have more: the SE keys)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(".se." in k or ".attention2.attention." in k for k in missing), missing


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    """A timm resnet34 checkpoint (random weights, non-trivial BN stats) standing in for ImageNet weights."""
    torch.manual_seed(0)
    state = randomize_norm_stats(timm.create_model("resnet34")).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "resnet34.pth")
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in state.items()}, folder / "resnet34.safetensors"
    )
    return folder / "resnet34.pth"


# -------------------------------------------------------------------- se_plugin_* encoders in plain smp.Unet
@pytest.mark.slow  # builds every se_plugin_* arch (260, on the meta device)
def test_every_se_plugin_arch_builds_as_smp_unet_encoder():
    names = timm.list_models("se_plugin_*")
    resnets = set(timm.list_models("se_plugin_*", module="resnet"))
    assert len(names) >= 40
    for name in names:
        with torch.device("meta"):
            model = smp.Unet(f"tu-{name}", encoder_weights=None, classes=2, in_channels=4)
        assert has_se(model.encoder), name
        assert _first_conv(model).in_channels == 4, name
        channels, reductions = model.encoder.out_channels, model.encoder.model.feature_info.reduction()
        assert len(channels) == 6, name
        if name in resnets:
            assert channels[0] == 4 and channels[-1] in (512, 2048), name
        elif reductions[0] == 1:  # DarkNet's and VGG's stride-1 level: smp uses it in place of the input's
            assert list(channels) == model.encoder.model.feature_info.channels(), name
        elif reductions[0] == 4:  # ConvNeXt's features start at stride 4: smp adds an empty stride-2 level
            assert list(channels) == [4, 0, *model.encoder.model.feature_info.channels()], name
        else:  # the other families (their channels against the base's: test_mobilenetv2.py, test_regnet.py)
            assert channels[0] == 4 and list(channels[1:]) == model.encoder.model.feature_info.channels(), name
        assert len(model.decoder.blocks) == 5 and model.segmentation_head[0].out_channels == 2, name


@pytest.mark.parametrize(
    "arch",
    [
        "resnet18",
        "resnet34",
        "resnet50d",
        "resnext50_32x4d",
        "wide_resnet50_2",
        "resnet10t",
        "resnetaa50",
        "resnetblur18",
    ],
)
def test_se_plugin_unet_equals_base_unet_with_identity_se(arch):
    torch.manual_seed(0)
    base = randomize_norm_stats(smp.Unet(f"tu-{arch}", encoder_weights=None, classes=3))
    ours = smp.Unet(f"tu-se_plugin_{arch}", encoder_weights=None, classes=3)
    _copy_weights(base, ours)
    assert len(se_modules(ours)) == len(list(iter_residual_blocks(ours.encoder)))
    out = _out(ours)
    assert out.shape == (1, 3, 64, 64)
    assert _max_diff(out, _out(base)) <= 1e-5


def test_encoder_depth_and_output_stride_for_se_plugin_encoder():
    for depth in range(1, 6):
        for stride in (8, 16, 32):
            kwargs = dict(
                encoder_weights=None,
                classes=2,
                encoder_depth=depth,
                output_stride=stride,
                decoder_channels=(32, 16, 16, 8, 8)[:depth],
            )
            torch.manual_seed(depth)
            ours = smp.Unet("tu-se_plugin_resnet18", **kwargs)
            # resnet18: 2 blocks per stage; depth d uses the stem and stages 1..d-1
            assert len(se_modules(ours)) == 2 * (depth - 1)
            with torch.no_grad():
                features = ours.eval().encoder(X)
            assert [f.shape[1] for f in features] == [3, 64, 64, 128, 256, 512][: depth + 1]
            assert [f.shape[-1] for f in features] == [64 // min(2**i, stride) for i in range(depth + 1)]
            assert _out(ours).shape == (1, 2, 64, 64)
            if stride == 16:
                base = randomize_norm_stats(smp.Unet("tu-resnet18", **kwargs))
                _copy_weights(base, ours)
                assert _max_diff(_out(ours), _out(base)) <= 1e-5


def test_se_unet_encoder_depth_with_se_plugin_encoder():
    for depth in range(1, 6):
        model = se_unet("tu-se_plugin_resnet18", 2, encoder_depth=depth)
        assert len(decoder_se_modules(model)) == depth
        assert len(se_modules(model)) == depth + 2 * (depth - 1)
        assert _out(model).shape == (1, 2, 64, 64)
    dilated = se_unet("tu-se_plugin_resnet18", 2, encoder_output_stride=8)
    assert dilated.encoder(X)[-1].shape[-1] == 8 and _out(dilated).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("encoder", ["tu-se_plugin_resnet18", "resnet18"])
def test_in_channels(encoder, in_channels):
    model = se_unet(encoder, 5, in_channels=in_channels)
    assert _first_conv(model).weight.shape == (64, in_channels, 7, 7)
    x = torch.randn(2, in_channels, 64, 64, generator=torch.Generator().manual_seed(1))
    assert _out(model, x).shape == (2, 5, 64, 64)


# --------------------------------------------------------------------------------------------------- se_unet
def test_se_unet_native_resnet_keys_init_and_options():
    plain = smp.Unet("resnet18", encoder_weights=None, classes=3)
    model = se_unet("resnet18", 3)
    encoder_se = {f"encoder.layer{s}.{b}.se" for s in range(1, 5) for b in range(2)}
    decoder_se = {f"decoder.blocks.{i}.attention2.attention" for i in range(5)}
    assert set(se_modules(model)) == encoder_se | decoder_se
    assert set(decoder_se_modules(model)) == decoder_se
    new_keys = set(model.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(model.state_dict())
    assert new_keys == {
        f"{m}.{t}"
        for m in encoder_se | decoder_se
        for t in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")
    }
    # hidden width make_divisible(C / 16, 8): decoder channels 256 .. 16, encoder 64 .. 512
    for i, channels in enumerate((256, 128, 64, 32, 16)):
        assert model.decoder.blocks[i].attention2.attention.hidden_channels == make_divisible(
            channels / 16, 8
        )
    assert model.encoder.layer4[0].se.hidden_channels == 32
    # no encoder weights: the paper's random init everywhere (gain 1, fc2 not zero)
    for se in se_modules(model).values():
        assert se.gate_gain.item() == 1.0 and se.fc2.weight.abs().sum() > 0
    assert _out(model).shape == (1, 3, 64, 64)

    model = se_unet("resnet18", 3, se_init="identity", reduction=8, se_stages=(3, 4), se_position="pre")
    assert (
        set(se_modules(model)) == {f"encoder.layer{s}.{b}.se" for s in (3, 4) for b in range(2)} | decoder_se
    )
    assert model.encoder.layer3[0].se_position == "pre"
    assert model.encoder.layer3[0].se.channels == 128  # "pre": on the block input
    assert model.decoder.blocks[0].attention2.attention.hidden_channels == 32
    for se in se_modules(model).values():
        assert se.gate_gain.item() == 2.0 and se.fc2.weight.abs().sum() == 0

    only_decoder = se_unet("resnet18", 3, se_encoder=False)
    assert set(se_modules(only_decoder)) == decoder_se
    only_encoder = se_unet("resnet18", 3, se_decoder=False)
    assert set(se_modules(only_encoder)) == encoder_se


def test_se_unet_does_not_add_se_twice_to_se_plugin_encoders():
    model = se_unet("tu-se_plugin_resnet18", 2, reduction=8, se_stages=(4,), se_position="post")
    assert set(se_modules(model)) == {f"encoder.model.layer4.{b}.se" for b in range(2)} | {
        f"decoder.blocks.{i}.attention2.attention" for i in range(5)
    }
    block = model.encoder.model.layer4[0]
    assert block.se_position == "post" and block.se.hidden_channels == 64
    assert block.se.gate_gain.item() == 1.0  # no weights: random init, passed to timm as se_init
    # timm ResNets get SE through add_se; an encoder with its own SE keeps it
    assert len(se_modules(se_unet("tu-resnet18", 2, se_decoder=False))) == 8
    seresnet = se_unet("tu-seresnet18", 2, se_decoder=False)
    assert not se_modules(seresnet) and has_se(seresnet.encoder)
    with pytest.raises(ValueError, match="SE built in.*'tu-resnet18'"):
        se_unet("tu-se_plugin_resnet18", se_encoder=False)


def test_se_unet_errors_are_clear():
    with pytest.raises(SEPluginsError) as info:
        se_unet("mobileone_s0", 2)
    message = str(info.value)
    assert "\n" not in message and "'mobileone_s0'" in message
    for supported in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "tu-se_plugin_"):
        assert supported in message
    assert set(se_modules(se_unet("mobileone_s0", 2, se_encoder=False))) == {
        f"decoder.blocks.{i}.attention2.attention" for i in range(5)
    }
    with pytest.raises(ValueError, match="decoder_attention_type"):
        se_unet("resnet18", decoder_attention_type="scse")
    with pytest.raises(SEPluginsError, match="neither a pretrained tag .* nor an existing file"):
        se_unet("tu-se_plugin_resnet18", encoder_weights="no/such/resnet18.pth")
    with pytest.raises(ValueError, match="se_init"):
        se_unet("resnet18", se_init="zeros")
    with pytest.raises(ValueError, match="disagree"):
        se_unet("resnet18", encoder_output_stride=8, output_stride=16)


# ------------------------------------------------------------------------------------------ add_se on a U-Net
@pytest.mark.parametrize("encoder", ["resnet34", "tu-resnet18"])
def test_add_se_to_existing_unet_keeps_keys_and_outputs(encoder):
    torch.manual_seed(0)
    model = randomize_norm_stats(smp.Unet(encoder, encoder_weights=None, classes=2))
    keys, reference = dict(model.state_dict()), _out(model)
    add_decoder_se(add_se(model))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in keys.items())
    assert all(".se." in k or ".attention2.attention." in k for k in set(state) - set(keys))
    assert len(decoder_se_modules(model)) == 5
    assert len(se_modules(model)) == 5 + len(list(iter_residual_blocks(model.encoder)))
    assert _max_diff(_out(model), reference) <= 1e-5
    with pytest.raises(ValueError, match="already holds SqueezeExcite"):
        add_decoder_se(model)
    with pytest.raises(ValueError, match="already holds SCSEModule"):
        add_decoder_se(smp.Unet("resnet18", encoder_weights=None, decoder_attention_type="scse"))


def test_registry():
    assert SEGMENTATION_MODELS == {"se_unet": se_unet, "unet": unet}
    se_params = inspect.signature(se_unet).parameters
    assert set(inspect.signature(unet).parameters) <= set(se_params)
    assert {"se_encoder", "se_decoder", "reduction", "se_stages", "se_position", "se_init"} <= set(se_params)
    plain = unet("resnet18", 4, encoder_depth=4, decoder_channels=(64, 32, 16, 8))
    assert not se_modules(plain) and len(plain.decoder.blocks) == 4
    assert set(plain.state_dict()) == set(
        smp.Unet(
            "resnet18", encoder_weights=None, classes=4, encoder_depth=4, decoder_channels=(64, 32, 16, 8)
        ).state_dict()
    )
    assert _out(plain).shape == (1, 4, 64, 64)


# ---------------------------------------------------------------------------------------------- pretrained
def test_pretrained_file_loads_base_weights_with_identity_se(resnet34_file):
    reference = smp.Unet(
        "tu-resnet34", encoder_weights=True, classes=3, pretrained_cfg_overlay=dict(file=str(resnet34_file))
    ).eval()
    ours = se_unet("tu-se_plugin_resnet34", 3, encoder_weights=resnet34_file).eval()
    native = se_unet("resnet34", 3, encoder_weights=str(resnet34_file)).eval()
    # pretrained weights: every SE (encoder and decoder) starts as the identity
    assert len(se_modules(ours)) == 16 + 5 and len(se_modules(native)) == 16 + 5
    assert all(se.gate_gain.item() == 2.0 for m in (ours, native) for se in se_modules(m).values())
    with torch.no_grad():
        expected = reference.encoder(X)
        for model in (ours, native):
            features = model.encoder(X)
            assert len(features) == len(expected) == 6
            assert max(_max_diff(a, b) for a, b in zip(features, expected, strict=True)) <= 1e-5
    _copy_weights(reference, ours)  # decoder and head; the encoder tensors are the same already
    assert _max_diff(_out(ours), _out(reference)) <= 1e-5
    # a first conv for other in_channels is adapted from the file the same way (timm) for both encoder kinds
    conv_timm = _first_conv(se_unet("tu-se_plugin_resnet34", encoder_weights=resnet34_file, in_channels=4))
    conv_native = _first_conv(se_unet("resnet34", encoder_weights=resnet34_file, in_channels=4))
    assert conv_timm.weight.shape == (64, 4, 7, 7) and torch.equal(conv_timm.weight, conv_native.weight)


def test_pretrained_file_that_does_not_fit_is_a_clear_error(resnet34_file):
    for encoder in ("tu-se_plugin_resnet50", "resnet50"):
        with pytest.raises(SEPluginsError) as info:
            se_unet(encoder, encoder_weights=resnet34_file)
        message = str(info.value)
        assert "\n" not in message and str(resnet34_file) in message and repr(encoder) in message


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import segmentation_models_pytorch as smp, torch
    from se_plugins.errors import SEPluginsError
    from se_plugins.segmentation import se_unet

    results = {}
    for name in ("tu-se_plugin_resnet34", "resnet34"):
        try:
            se_unet(name, encoder_weights="imagenet")
            results[name] = None
        except SEPluginsError as err:
            results[name] = str(err)
    # the same weights in the Hugging Face cache: now they load, through se_unet and smp.Unet's default
    repo = Path(sys.argv[2]) / "hub" / "models--timm--resnet34.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(sys.argv[1], repo / "snapshots" / ("0" * 40) / "model.safetensors")
    conv1 = torch.load(Path(sys.argv[1]).with_suffix(".pth"), weights_only=True)["conv1.weight"]
    model = se_unet("tu-se_plugin_resnet34", encoder_weights="imagenet")
    default = smp.Unet("tu-se_plugin_resnet34")
    results["cached"] = [torch.equal(m.encoder.model.conv1.weight, conv1) for m in (model, default)]
    gains = [m.gate_gain.item() for m in model.modules() if hasattr(m, "gate_gain")]
    results["cached_identity"] = len(gains) == 21 and set(gains) == {2.0}
    print(json.dumps(results))
    """
)


def test_default_weights_without_network_clear_error_then_cache(resnet34_file, tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path),
        "TORCH_HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(resnet34_file.with_suffix(".safetensors")), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    timm_message, native_message = results["tu-se_plugin_resnet34"], results["resnet34"]
    for message in (timm_message, native_message):
        assert message is not None and "\n" not in message
        assert "not in the local cache and could not be downloaded" in message
        assert "encoder_weights='path/to/resnet34.pth'" in message
    assert (
        "encoder 'tu-se_plugin_resnet34'" in timm_message and "'hf-hub:timm/resnet34.a1_in1k'" in timm_message
    )
    assert "encoder 'resnet34'" in native_message and "'hf-hub:smp-hub/resnet34.imagenet'" in native_message
    assert results["cached"] == [True, True] and results["cached_identity"]

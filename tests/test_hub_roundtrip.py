"""Sharing fine-tuned SE models: timm's ``save_for_hf`` / ``local-dir:`` and smp's ``save_pretrained`` round trips."""

import json

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from timm.models import save_for_hf

from se_plugins import se_modules
from se_plugins.segmentation import SEUnet, se_unet
from tests.conftest import randomize_norm_stats


def _fine_tuned(model: torch.nn.Module) -> torch.nn.Module:
    """Weights unlike any init: every parameter and norm statistic moved, SE gates not the identity."""
    randomize_norm_stats(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return model.eval()


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pth"])
def test_timm_save_for_hf_loads_back_with_se_options(safe, tmp_path, rng_input):
    tuned = _fine_tuned(timm.create_model("se_plugin_resnet18", num_classes=7, se_reduction=8, se_stages=(3, 4)))
    save_for_hf(tuned, tmp_path, safe_serialization=safe)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "se_plugin_resnet18"
    assert config["model_args"]["se_reduction"] == 8 and config["model_args"]["se_stages"] == [3, 4]

    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert set(se_modules(loaded)) == set(se_modules(tuned)) == {f"layer{s}.{b}.se" for s in (3, 4) for b in (0, 1)}
    assert all(se.hidden_channels == max(8, se.channels // 8) for se in se_modules(loaded).values())
    assert _same(loaded, tuned, rng_input(2, 3, 64, 64))


@pytest.mark.parametrize(
    "encoder", ["resnet18", "tu-resnet18", "tu-se_plugin_resnet18"], ids=["native", "timm", "se_plugin"]
)
def test_smp_save_pretrained_round_trip(encoder, tmp_path, rng_input):
    tuned = _fine_tuned(
        se_unet(encoder, 3, encoder_depth=4, decoder_channels=(64, 32, 16, 8), reduction=8, se_stages=(2, 3))
    )
    assert isinstance(tuned, SEUnet) and isinstance(tuned, smp.Unet)
    tuned.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_model_class"] == "SEUnet" and config["se_stages"] == [2, 3] and config["reduction"] == 8
    assert config["encoder_weights"] is None  # every weight is in the saved file: a reload fetches nothing
    x = rng_input(1, 3, 64, 64)
    for loaded in (SEUnet.from_pretrained(tmp_path), smp.from_pretrained(tmp_path)):
        assert isinstance(loaded, SEUnet)
        assert set(se_modules(loaded)) == set(se_modules(tuned))
        assert _same(loaded, tuned, x)


def test_smp_round_trip_of_pretrained_encoder_does_not_refetch(tmp_path, rng_input):
    """A U-Net built from a local weights file saves as encoder_weights=None and reloads from the folder alone."""
    base = randomize_norm_stats(timm.create_model("resnet18"))
    torch.save(base.state_dict(), tmp_path / "resnet18.pth")
    model = _fine_tuned(se_unet("resnet18", 2, encoder_weights=tmp_path / "resnet18.pth"))
    assert json.loads(json.dumps(model.config))["se_init"] == "identity"  # resolved from the pretrained encoder
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "resnet18.pth").unlink()
    assert _same(SEUnet.from_pretrained(tmp_path / "saved"), model, rng_input(1, 3, 64, 64))

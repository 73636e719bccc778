"""SE in smp's own (non-timm) DPN, Inception-v4, Inception-ResNet-v2 and Xception encoders: ``add_se`` on an
``smp.Unet(<native name>)`` and ``se_unet(<native name>)``, with the placements of timm's twins of those nets."""

import copy

import pytest
import segmentation_models_pytorch as smp
import torch

from se_plugins import add_se, has_se, se_modules, set_se_fused
from se_plugins.segmentation import se_unet
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import assert_identity_init, assert_se_grads, batch
from tests.test_torchscript import assert_scripted_matches

# encoder -> (SE modules, the first SE's key prefix, SE modules in stage 1)
ENCODERS = {
    "dpn68": (22, "encoder.features.conv2_1.se.", 3),  # 3 + 4 + 12 + 3 dual path blocks
    "dpn68b": (22, "encoder.features.conv2_1.se.", 3),  # "b" blocks: separate 1x1 convs for the two paths
    "inceptionv4": (19, "encoder.features.3.se.", 3),  # Mixed_3a/4a/5a, 4 A, Reduction_A, 7 B, Reduction_B, 3 C
    "inceptionresnetv2": (40, "encoder.repeat.0.se.", 10),  # 10 Block35, 20 Block17, 9 + 1 Block8
    "xception": (12, "encoder.block1.se.", 3),  # entry flow block1..3, middle 4..11, exit 12
}


def _unet(encoder: str) -> smp.Unet:
    torch.manual_seed(0)
    return smp.Unet(encoder, encoder_weights=None, classes=2, decoder_channels=(32, 16, 8, 8, 8))


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_identity_insertion_keeps_the_unet_and_its_keys(encoder):
    count, first_key, _ = ENCODERS[encoder]
    model = randomize_norm_stats(_unet(encoder)).eval()
    state, before_state = assert_identity_init(model, batch())  # bit for bit; random SE then changes the output
    new_keys = sorted(set(state) - set(before_state))
    assert len(se_modules(model)) == count and len(new_keys) == 5 * count
    assert all(".se." in k for k in new_keys) and any(k.startswith(first_key) for k in new_keys)


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_stages_select_the_blocks_of_the_first_stage(encoder):
    _, first_key, first_stage = ENCODERS[encoder]
    model = add_se(_unet(encoder), stages=(1,))
    assert len(se_modules(model)) == first_stage and f"{first_key.removesuffix('.se.')}.se" in se_modules(model)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_se_unet_trains_one_step(encoder):
    torch.manual_seed(0)
    unet = se_unet(encoder, 2, se_decoder=False, decoder_channels=(32, 16, 8, 8, 8))
    assert has_se(unet.encoder) and len(se_modules(unet)) == ENCODERS[encoder][0]
    optimizer = torch.optim.SGD(unet.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(unet.train()(batch()), torch.zeros(2, 64, 64, dtype=torch.long))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert_se_grads(unet)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["inceptionv4", "inceptionresnetv2", "xception"])
def test_scriptable_encoders_stay_scriptable(encoder):
    """smp marks these encoders scriptable (its DPN is not: its blocks pass tuples); their SE twins script too."""
    encoder_module = smp.encoders.get_encoder(encoder, weights=None, depth=5)
    assert encoder_module._is_torch_scriptable
    assert_scripted_matches(random_se(add_se(encoder_module, init="random")), batch())


def test_dpn_fused_equals_plain():
    fused = random_se(add_se(_unet("dpn68"), init="random"))
    plain = set_se_fused(copy.deepcopy(fused), False)
    with torch.no_grad():
        assert same_ops_close(fused(batch()), plain(batch()))  # addcmul vs multiply-then-add: one rounding per block


@pytest.mark.parametrize("encoder", ["dpn68", "inceptionv4", "inceptionresnetv2", "xception"])
def test_smp_encoder_contracts(encoder, rng_input):
    """smp's encoder contracts with SE in: ``in_channels``, ``depth`` (feature count and strides), and for DPN (the
    only one of the four smp lets dilate) ``output_stride``; backward reaches every SE."""
    for in_channels, depth in ((1, 5), (4, 5), (3, 3)):
        module = add_se(smp.encoders.get_encoder(encoder, weights=None, in_channels=in_channels, depth=depth))
        features = module(rng_input(1, in_channels, 64, 64))
        assert [64 // f.shape[-1] for f in features] == [1, 2, 4, 8, 16, 32][: depth + 1]
        assert [f.shape[1] for f in features] == list(module.out_channels)
        if depth == 5:  # a shallower encoder may keep the deeper blocks (unused)
            features[-1].mean().backward()
            assert_se_grads(module)
    if encoder == "dpn68":
        for stride in (8, 16):
            module = add_se(smp.encoders.get_encoder(encoder, weights=None, output_stride=stride)).eval()
            with torch.no_grad():
                features = module(rng_input(1, 3, 64, 64))
            assert [64 // f.shape[-1] for f in features] == [min(stride, s) for s in (1, 2, 4, 8, 16, 32)]

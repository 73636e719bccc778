"""Checks the SE family tests (``tests/test_<family>.py``) share: downstream training, graph capture, pretrained.

Plain functions that assert; each returns what it built, so a family test can add its own checks on it.
"""

import copy

import segmentation_models_pytorch as smp
import timm
import torch
from timm.layers import make_divisible

from se_plugins import add_se, se_modules
from se_plugins.detection import fasterrcnn_timm_fpn
from tests.conftest import randomize_norm_stats, same_ops_close
from tests.test_torchscript import assert_scripted_matches

SE_KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")  # one SqueezeExcite's state dict


def batch(seed: int = 0, size: int = 64, n: int = 2) -> torch.Tensor:
    """``n`` seeded random RGB images of ``size`` x ``size``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def count_params(model: torch.nn.Module) -> int:
    """The number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def se_params(channels: int, reduction: float = 16) -> int:
    """The parameter count of one SqueezeExcite on ``channels`` (timm's hidden-width rule: divisible by 8)."""
    hidden = make_divisible(channels / reduction, 8, round_limit=0.0)
    return 2 * channels * hidden + hidden + channels


def assert_se_grads(model: torch.nn.Module, reference: torch.nn.Module | None = None) -> None:
    """Every parameter of every SE module of ``model`` (found in ``reference``, e.g. for an FX graph) has a
    gradient, and so does every parameter named ``*.se.*``."""
    names = tuple(f"{n}." for n in se_modules(model if reference is None else reference))
    assert names
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(names) or ".se." in n)


def assert_identity_init(model: torch.nn.Module, x: torch.Tensor, *, exact: bool = True, **add_se_kwargs):
    """``add_se(model, **add_se_kwargs)`` at identity init keeps ``model(x)`` (bit for bit when ``exact``, else
    ``same_ops_close``); randomized SE then changes it (by over 1e-3 of its max); every base tensor is kept.
    Returns ``(state, before_state)``: the state dicts with SE and before it."""
    before_state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        before = model(x)
        add_se(model, **add_se_kwargs)
        assert torch.equal(model(x), before) if exact else same_ops_close(model(x), before)
        for se in se_modules(model).values():
            se.reset_parameters("random")
        assert (model(x) - before).abs().max().item() > 1e-3 * before.abs().max().item()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())
    return state, before_state


def assert_intermediates_match(ours: torch.nn.Module, base: torch.nn.Module, x: torch.Tensor, *, exact: bool = True):
    """``forward_intermediates(x)`` of ``ours`` (final and every intermediate) equals ``base``'s (bit for bit when
    ``exact``, else ``same_ops_close``). Returns ``ours``' ``(final, intermediates)``."""
    close = torch.equal if exact else same_ops_close
    with torch.no_grad():
        final, inter = ours.forward_intermediates(x)
        base_final, base_inter = base.forward_intermediates(x)
    assert all(close(a, b) for a, b in zip([final, *inter], [base_final, *base_inter], strict=True))
    return final, inter


def assert_features_match_base(
    arch: str,
    reductions: list[int],
    *,
    exact: bool = True,
    x: torch.Tensor | None = None,
    se_count: int | None = None,
    **kwargs,
):
    """``features_only`` twin of ``arch`` (``kwargs``: e.g. the pretrained file) has SE (``se_count`` modules when
    given) and the ``reductions``, and its features of ``x`` (default ``batch()``) equal the base's (bit for bit when
    ``exact``, else ``same_ops_close``). Returns the twin."""
    close = torch.equal if exact else same_ops_close
    x = batch() if x is None else x
    feats = timm.create_model(f"se_plugin_{arch}", features_only=True, **kwargs).eval()
    base_feats = timm.create_model(arch, features_only=True, **kwargs).eval()
    assert se_modules(feats) and feats.feature_info.reduction() == reductions
    assert se_count is None or len(se_modules(feats)) == se_count
    with torch.no_grad():
        assert all(close(a, b) for a, b in zip(feats(x), base_feats(x), strict=True))
    return feats


def detector_trains_one_step(arch: str, se_count: int, *, size=(64, 96), box=(8.0, 8.0, 40.0, 50.0), **kwargs):
    """``fasterrcnn_timm_fpn(arch)`` (``kwargs``: out_indices, backbone_kwargs, ...) has ``se_count`` SE modules and
    takes one training step on one ``size`` image with one ``box``: finite loss, a gradient for every SE parameter."""
    torch.manual_seed(0)
    height, width = size
    detector = fasterrcnn_timm_fpn(arch, num_classes=3, fpn_channels=32, min_size=height, max_size=width,
                                   rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20, **kwargs)  # fmt: skip
    assert len(se_modules(detector)) == se_count
    images = [torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))]
    targets = [{"boxes": torch.tensor([list(box)]), "labels": torch.tensor([1])}]
    loss = sum(detector.train()(images, targets).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert_se_grads(detector)
    return detector


def unet_trains_one_step(encoder: str, se_count: int, *, size: int = 64, lr: float = 0.1) -> smp.Unet:
    """``smp.Unet(encoder)`` has ``se_count`` SE modules and takes one SGD step (``lr``) on a seeded ``size`` batch:
    finite loss, a gradient for every SE parameter."""
    unet = smp.Unet(encoder, encoder_weights=None, classes=2, decoder_channels=(32, 16, 8, 8, 8))
    assert len(se_modules(unet)) == se_count
    optimizer = torch.optim.SGD(unet.parameters(), lr=lr)
    loss = torch.nn.functional.cross_entropy(unet.train()(batch(2, size)), torch.zeros(2, size, size, dtype=torch.long))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert_se_grads(unet)
    return unet


def fx_matches_eager(model: torch.nn.Module, x: torch.Tensor, *, grad_modes=(True, False), check_graph=None):
    """``torch.fx.symbolic_trace(model)`` traced with grad on and off (``grad_modes``) gives ``model``'s output (same
    ops, same rounding; ``check_graph(graph)`` asserts more on each), and the last graph's backward reaches every SE
    parameter. Returns that graph."""
    for grad in grad_modes:
        with torch.set_grad_enabled(grad):
            graph = torch.fx.symbolic_trace(model)
        if check_graph is not None:
            check_graph(graph)
        with torch.no_grad():
            assert same_ops_close(graph(x), model(x))
    graph(x).sum().backward()
    assert_se_grads(graph, model)
    return graph


def compile_matches_eager(model: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.compile(model, backend="eager", fullgraph=True)`` gives ``model``'s output."""
    with torch.no_grad():
        assert same_ops_close(torch.compile(model, backend="eager", fullgraph=True)(x), model(x))


def script_fx_and_compile_match_eager(model: torch.nn.Module, x: torch.Tensor, **fx_kwargs):
    """TorchScript, FX (see ``fx_matches_eager``) and ``torch.compile(backend="eager")`` of ``model`` match eager."""
    assert_scripted_matches(model, x)
    graph = fx_matches_eager(model, x, **fx_kwargs)
    compile_matches_eager(model, x)
    return graph


def fx_features_se_count(arch: str, suffix: str = ".se.fc1.weight") -> int:
    """How many SE modules (state keys ending ``suffix``) timm's FX feature extractor of ``arch`` keeps."""
    fx = timm.create_model(arch, features_only=True, feature_cls="fx")
    return sum(k.endswith(suffix) for k in fx.state_dict())


def pretrained_from_base(arch: str, tmp_path, *, prepare=randomize_norm_stats, **kwargs):
    """Saves a base ``arch`` (weights from ``prepare``) to ``tmp_path / "base.pth"``; loads base and
    ``se_plugin_<arch>`` from it with ``pretrained=True`` (``kwargs`` extra): the SE model keeps every base tensor and
    adds exactly each SE module's ``SE_KEYS``. Returns ``(base, ours, pretrained_kwargs)``, both in eval mode."""
    torch.manual_seed(0)
    torch.save(prepare(timm.create_model(arch, **kwargs)).state_dict(), tmp_path / "base.pth")
    pretrained = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "base.pth")), **kwargs)
    base = timm.create_model(arch, **pretrained).eval()
    ours = timm.create_model(f"se_plugin_{arch}", **pretrained).eval()
    state, ours_state = torch.load(tmp_path / "base.pth", weights_only=True), ours.state_dict()
    assert all(torch.equal(ours_state[k], v) for k, v in state.items())
    assert set(ours_state) - set(state) == {f"{n}.{k}" for n in se_modules(ours) for k in SE_KEYS}
    return base, ours, pretrained

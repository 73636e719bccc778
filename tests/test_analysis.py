"""Excitation analysis: recorded gates, per-class aggregation, identity init, and ``se-plugins excitations``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import se_plugins
from se_plugins.analysis import GateRecorder, collect_excitations, excitation_stats, select_blocks
from se_plugins.cli import main
from se_plugins.engine.config import load_config
from se_plugins.engine.tasks.classification import ClassificationTask

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "classification" / "shapes_se_resnet10t.yaml"
SIZE = 32


def overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.shapes.num_train=8",
        "data.shapes.num_val=12",
        f"data.shapes.image_size={SIZE}",
        f"data.image_size={SIZE}",
        "data.num_workers=0",
        "eval.batch_size=5",  # 12 images: batches of 5, 5, 2
        f"output_dir={root.parent / 'run'}",
        *extra,
    ]


def build(root: Path, *extra: str) -> tuple[ClassificationTask, torch.nn.Module, torch.utils.data.DataLoader]:
    task = ClassificationTask(load_config(DEMO, overrides(root, *extra)))
    val = task.build_val_dataset()
    torch.manual_seed(0)
    return task, task.build_model(), task.build_val_loader(val, distributed=False)


def test_identity_init_untrained_every_applied_gate_is_exactly_one(tmp_path):
    task, model, loader = build(tmp_path / "shapes", "model.se.init=identity")
    result = collect_excitations(task, model, loader, keep_images=True)
    assert result.blocks == list(se_plugins.se_modules(model)) and len(result.blocks) == 4  # resnet10t: 4 blocks
    for block in result.blocks:
        assert result.gates[block].shape == (12, model.get_submodule(block).channels)
        assert (result.gates[block] == 1.0).all()  # 2 * sigmoid(0), exactly
        assert (result.activations[block] == 0.5).all()
        assert result.distance_from_identity[block] == 0.0 and result.class_spread[block] == 0.0
    assert result.counts.tolist() == [3, 3, 3, 3, 12]  # balanced classes + "all"
    assert all(getattr(m, "se_fused", True) for m in model.modules())  # fused form restored afterwards


def test_recorded_gates_are_the_se_forward_and_aggregate_per_class(tmp_path):
    task, model, loader = build(tmp_path / "shapes", "model.se.init=random")
    result = collect_excitations(task, model, loader, keep_images=True)
    # Independently: the input of every SE call (plain form), pushed through the SE layers by hand.
    inputs: dict[str, list[torch.Tensor]] = {b: [] for b in result.blocks}
    handles = [
        se.register_forward_pre_hook(lambda m, args, b=b: inputs[b].append(args[0].detach()))
        for b, se in se_plugins.se_modules(model).items()
    ]
    se_plugins.set_se_fused(model, False)
    model.eval()
    labels = []
    with torch.no_grad():
        for images, y in loader:
            model(images)
            labels += y.tolist()
    for h in handles:
        h.remove()
    for block, se in se_plugins.se_modules(model).items():
        x = torch.cat(inputs[block])
        with torch.no_grad():
            act = torch.sigmoid(se.fc2(se.act(se.fc1(x.mean((2, 3), keepdim=True))))).flatten(1)
        assert torch.equal(torch.from_numpy(result.activations[block]), act)
        assert torch.equal(torch.from_numpy(result.gates[block]), act * se.gate_gain)  # random init: gain 1
        a = act.double().numpy()
        for k in range(4):
            np.testing.assert_allclose(result.mean[block][k], a[np.array(labels) == k].mean(0), rtol=1e-12)
        np.testing.assert_allclose(result.mean[block][4], a.mean(0), rtol=1e-12)
        assert result.distance_from_identity[block] == pytest.approx(float(np.abs(a - 1).mean()), rel=1e-12)
        class_means = np.stack([a[np.array(labels) == k].mean(0) for k in range(4)])
        assert result.class_spread[block] == pytest.approx(float(class_means.std(0).mean()), rel=1e-9)
    assert result.image_labels == [[k] for k in labels]


def test_stats_multi_label_images_and_empty_class():
    act = {"b": torch.tensor([[0.2, 0.4], [0.6, 0.8], [1.0, 0.0]])}
    gates = {"b": 2 * act["b"]}
    result = excitation_stats(act, gates, [[0, 1], [1], []], ["x", "y", "z"])
    np.testing.assert_allclose(result.mean["b"][0], [0.2, 0.4])
    np.testing.assert_allclose(result.mean["b"][1], [0.4, 0.6])
    assert np.isnan(result.mean["b"][2]).all()  # no image of class z
    np.testing.assert_allclose(result.mean["b"][3], [0.6, 0.4])
    assert result.counts.tolist() == [1, 2, 0, 3]
    expected = np.abs(2 * np.array([[0.2, 0.4], [0.6, 0.8], [1.0, 0.0]]) - 1).mean()
    assert result.distance_from_identity["b"] == pytest.approx(expected)
    assert result.class_spread["b"] == pytest.approx(np.std([[0.2, 0.4], [0.4, 0.6]], axis=0).mean())
    doc = result.to_json()
    assert doc["blocks"][0]["mean"][2] == [None, None] and doc["rows"] == ["x", "y", "z", "all"]
    with pytest.raises(ValueError, match="class 3, outside 0..2"):
        excitation_stats(act, gates, [[3], [], []], ["x", "y", "z"])


def test_recorder_rejects_a_model_without_se():
    import timm

    with pytest.raises(se_plugins.SEPluginsError, match="has no SE module"):
        GateRecorder(timm.create_model("resnet10t"))


def test_block_selection():
    names = [f"layer{s}.{b}.se" for s in range(1, 5) for b in range(3)]
    assert select_blocks(names, None) == [names[i] for i in (0, 2, 4, 7, 9, 11)]  # 6 spread over the depth
    assert select_blocks(names, ["layer2.1", "-1", "layer1.0.se"]) == ["layer2.1.se", "layer4.2.se", "layer1.0.se"]
    with pytest.raises(se_plugins.ConfigError, match="--blocks: 'layer9' is not an SE block"):
        select_blocks(names, ["layer9"])
    # blocks whose SE sits in their own attention slot (cspnet, byobnet: attn, attn2, attn_last) by block name too
    slots = ["stages.0.blocks.0.attn", "stages.1.blocks.0.attn2", "stages.2.blocks.1.attn_last"]
    assert select_blocks(slots, ["stages.1.blocks.0", "stages.2.blocks.1", "0"]) == [slots[1], slots[2], slots[0]]
    with pytest.raises(se_plugins.ConfigError, match="--blocks: 'stages.1' is not an SE block"):
        select_blocks(slots, ["stages.1"])


@pytest.mark.slow
def test_cli_writes_png_and_json_with_the_api_numbers(tmp_path, capsys):
    root = tmp_path / "shapes"
    task, model, loader = build(root, "model.se.init=random")
    ckpt = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    expected = collect_excitations(task, model, loader)
    out = tmp_path / "exc"
    args = ["--set", *overrides(root, "model.se.init=random"), "--out", str(out)]
    assert main(["excitations", str(DEMO), "--checkpoint", str(ckpt), "--blocks", "0", "layer4.0", *args]) == 0
    assert (out / "excitations.png").stat().st_size > 10_000
    doc = json.loads((out / "excitations.json").read_text())
    assert doc["plotted_blocks"] == ["layer1.0.se", "layer4.0.se"] and doc["plotted_classes"] == doc["class_names"]
    assert [b["name"] for b in doc["blocks"]] == expected.blocks
    for entry in doc["blocks"]:
        assert entry["distance_from_identity"] == pytest.approx(expected.distance_from_identity[entry["name"]])
        np.testing.assert_allclose(entry["mean"], expected.mean[entry["name"]], atol=1e-6)  # JSON rounds to 1e-6
    assert "layer4.0.se" in capsys.readouterr().out
    assert main(["excitations", str(DEMO), "--checkpoint", str(ckpt), "--classes", "hexagon", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--classes: 'hexagon' is not a class" in err[0]


TRAINED_DEMO = REPO / "runs" / "shapes_se_resnet10t" / "best.pth"


@pytest.mark.slow
@pytest.mark.skipif(
    not TRAINED_DEMO.is_file() or not (REPO / "data" / "shapes_cls48" / "shapes.json").is_file(),
    reason="needs the trained classification demo (se-plugins train configs/classification/shapes_se_resnet10t.yaml)",
)
def test_trained_demo_late_blocks_are_more_class_specific():
    """The paper's observation, on the trained CPU demo: class spread grows from the first to the last block."""
    from se_plugins.analysis import run_excitations

    cfg = load_config(DEMO, ["data.num_workers=0"])
    result = run_excitations(cfg, TRAINED_DEMO, REPO / "runs" / "shapes_se_resnet10t" / "excitations_test")
    spread = [result.class_spread[b] for b in result.blocks]
    assert spread[-1] > spread[0] and spread == sorted(spread)


def test_detection_and_segmentation_images_count_for_every_class_they_show(tmp_path):
    from se_plugins.data import SHAPE_CATEGORY_IDS
    from se_plugins.engine.tasks import build_task

    common = ["data.shapes.num_train=2", "data.shapes.num_val=6", "data.shapes.image_size=64", "data.num_workers=0"]
    runs = {
        "detection/shapes_fasterrcnn_se_r18.yaml": ["model.min_size=64", "model.max_size=64", "eval.batch_size=4"],
        "segmentation/shapes_unet_se_r18.yaml": [
            "model.kwargs.encoder_depth=3",
            "model.kwargs.decoder_channels=[16,8,8]",
            "data.image_size=null",
            "eval.batch_size=4",
        ],
    }
    labels = {}
    for name, extra in runs.items():
        cfg = load_config(REPO / "configs" / name, [f"data.root={tmp_path / 'shapes'}", *common, *extra])
        task = build_task(cfg)
        model = task.build_model()  # identity SE
        result = collect_excitations(task, model, task.build_val_loader(task.build_val_dataset(), False))
        assert result.class_names == ["circle", "square", "triangle", "star"]  # background is not a class
        assert all(v == 0.0 for v in result.distance_from_identity.values())
        labels[name] = result
    coco = json.loads((tmp_path / "shapes" / "coco" / "annotations" / "instances_val.json").read_text())
    expected = [
        sorted({SHAPE_CATEGORY_IDS.index(a["category_id"]) for a in coco["annotations"] if a["image_id"] == img["id"]})
        for img in sorted(coco["images"], key=lambda i: i["id"])
    ]
    det, seg = labels.values()
    counts = [sum(k in e for e in expected) for k in range(4)] + [len(expected)]
    assert det.counts.tolist() == counts and seg.counts.tolist() == counts

"""Classification: the shapes classification set, ImageFolder reading, top-k metric, and the task through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins.cli import main
from se_plugins.data import SHAPE_CLASSES
from se_plugins.data.classification import ImageFolderClassification, classification_transforms
from se_plugins.data.shapes_classification import make_shapes_classification
from se_plugins.engine.config import load_config
from se_plugins.engine.metrics.classification import ClassificationMetric
from se_plugins.engine.tasks.classification import ClassificationTask
from se_plugins.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "classification" / "shapes_se_resnet10t.yaml"
SIZE = 32


def tiny_overrides(root: Path, out: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.shapes.num_train=16",
        "data.shapes.num_val=8",
        f"data.shapes.image_size={SIZE}",
        f"data.image_size={SIZE}",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=8",
        "train.warmup_iters=0",
        "train.tensorboard=false",
        "train.num_vis=4",
        "eval.batch_size=4",
        f"output_dir={out}",
    ]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ data


def test_shapes_classification_layout_balance_and_determinism(tmp_path):
    root = make_shapes_classification(tmp_path / "a", num_train=8, num_val=4, image_size=SIZE, seed=1)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(SHAPE_CLASSES)
    for name in SHAPE_CLASSES:  # image i has class i % 4: balanced
        assert len(list((root / "train" / name).glob("*.jpg"))) == 2
        assert len(list((root / "val" / name).glob("*.jpg"))) == 1
    assert (root / "train" / "circle" / "train_000001.jpg").is_file()
    assert (root / "train" / "square" / "train_000002.jpg").is_file()
    with Image.open(root / "val" / "star" / "val_000004.jpg") as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    marker = json.loads((root / "shapes.json").read_text())
    assert marker["kind"] == "classification" and marker["seed"] == 1
    again = make_shapes_classification(tmp_path / "b", num_train=8, num_val=4, image_size=SIZE, seed=1)
    assert _files(root) == _files(again)
    other = make_shapes_classification(tmp_path / "c", num_train=8, num_val=4, image_size=SIZE, seed=2)
    assert _files(root) != _files(other)


def test_shapes_classification_reuse_and_regeneration_leave_no_stale_file(tmp_path):
    root = make_shapes_classification(tmp_path, num_train=8, num_val=4, image_size=SIZE)
    stamp = (root / "train" / "circle" / "train_000001.jpg").stat().st_mtime_ns
    make_shapes_classification(tmp_path, num_train=8, num_val=4, image_size=SIZE)  # complete: reused
    assert (root / "train" / "circle" / "train_000001.jpg").stat().st_mtime_ns == stamp
    make_shapes_classification(tmp_path, num_train=4, num_val=4, image_size=SIZE)  # fewer images
    assert sum(1 for _ in (root / "train").rglob("*.jpg")) == 4
    assert ImageFolderClassification(root / "train").samples.__len__() == 4
    with pytest.raises(ValueError, match="image_size"):
        make_shapes_classification(tmp_path / "x", image_size=16)


def test_image_folder_labels_classes_and_errors(tmp_path):
    root = make_shapes_classification(tmp_path / "s", num_train=8, num_val=4, image_size=SIZE)
    ds = ImageFolderClassification(root / "train", transform=classification_transforms(False, SIZE, crop_pct=1.0))
    assert ds.class_names == sorted(SHAPE_CLASSES)  # folder names, sorted
    assert [Path(p).parent.name for p, _ in ds.samples] == [ds.class_names[k] for _, k in ds.samples]
    image, label = ds[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and label == 0
    ordered = ImageFolderClassification(root / "train", classes=SHAPE_CLASSES)
    assert ordered.class_names == SHAPE_CLASSES
    assert all(ordered.class_names[k] == Path(p).parent.name for p, k in ordered.samples)

    with pytest.raises(DataError, match="nope.*not found"):
        ImageFolderClassification(tmp_path / "nope")
    with pytest.raises(DataError, match="no folder for class 'hexagon'"):
        ImageFolderClassification(root / "train", classes=["circle", "hexagon"])
    bad = root / "train" / "circle" / "train_000001.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"train_000001\.jpg: cannot read image"):
        ImageFolderClassification(root / "train")[0]


# ------------------------------------------------------------------------------------------------ metric


def test_topk_and_confusion_by_hand():
    logits = torch.tensor(
        [
            [5.0, 1.0, 0.0, -1.0],  # true 0, top1 0
            [0.0, 1.0, 3.0, 2.0],  # true 1: ranked 2, 3, 1 -> top1 miss, top3 hit
            [0.0, 0.0, 1.0, 9.0],  # true 2: ranked 3, 2 -> top2 hit
            [1.0, 0.0, 0.0, 2.0],  # true 3, top1 3
            [1.0, 2.0, 0.0, 0.0],  # true 1, top1 1
        ]
    )
    target = torch.tensor([0, 1, 2, 3, 1])
    metric = ClassificationMetric(4, topk=(1, 2, 5), class_names=list("abcd"))
    metric.update(logits[:2], target[:2])
    metric.update(logits[2:], target[2:])
    metric.reduce()  # single process: unchanged
    out = metric.compute()
    assert out["top1"] == 3 / 5 and out["top2"] == 4 / 5 and out["top5"] == 1.0
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in [(0, 0), (1, 2), (2, 3), (3, 3), (1, 1)]:
        expected[t, p] += 1
    assert torch.equal(out["confusion"], expected)
    assert out["per_class_acc"] == {"a": 1.0, "b": 0.5, "c": 0.0, "d": 1.0}
    assert out["mean_class_acc"] == (1 + 0.5 + 0 + 1) / 4 and out["count"] == 5
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        metric.update(logits[:1], torch.tensor([4]))


# ------------------------------------------------------------------------------------------------ task


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through ``se-plugins train``: (data root, run dir, overrides)."""
    tmp = tmp_path_factory.mktemp("cls")
    overrides = tiny_overrides(tmp / "shapes", tmp / "run")
    assert main(["train", str(DEMO), "--set", *overrides]) == 0
    return tmp / "shapes", tmp / "run", overrides


@pytest.mark.slow
def test_train_writes_outputs_and_eval_matches_a_hand_computation(trained, tmp_path):
    root, run, overrides = trained
    for name in ("best.pth", "last.pth", "config.yaml", "metrics.jsonl", "curves.png", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert (run / "predictions" / "predictions.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (evaluation,) = [r for r in records if r["type"] == "eval"]
    assert {"top1", "top5", "mean_class_acc", "acc/circle", "acc/star"} <= set(evaluation)

    out = tmp_path / "eval.json"
    assert main(["eval", str(DEMO), "--checkpoint", str(run / "best.pth"), "--out", str(out), "--set", *overrides]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    # the same numbers from the checkpoint, a timm model and the folder, computed here
    model = timm.create_model("se_plugin_resnet10t", num_classes=4)
    model.load_state_dict(torch.load(run / "best.pth", weights_only=True)["model"])
    model.eval()
    val = ImageFolderClassification(root / "val", transform=classification_transforms(False, SIZE, crop_pct=1.0))
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([k for _, k in val.samples])
    with torch.no_grad():
        pred = model(images).argmax(1)
    assert metrics["top1"] == pytest.approx((pred == labels).float().mean().item(), abs=0)
    assert metrics["top5"] == 1.0  # 4 classes: k is capped at 4
    per_class = {name: (pred[labels == k] == k).float().mean().item() for k, name in enumerate(val.class_names)}
    assert metrics["acc/square"] == pytest.approx(per_class["square"], abs=1e-12)


def test_build_model_se_baseline_and_errors(tmp_path):
    cfg = load_config(DEMO, tiny_overrides(tmp_path / "d", tmp_path / "r"))
    task = ClassificationTask(cfg)
    assert task.model_name() == "se_plugin_resnet10t" and se_plugins.has_se(task.build_model())
    plain = ClassificationTask(load_config(DEMO, ["model.se.enabled=false", "model.name=se_plugin_resnet10t"]))
    assert plain.model_name() == "resnet10t" and not se_plugins.has_se(plain.build_model())
    with pytest.raises(ConfigError, match="'efficientnet_b0' has no se_plugin_ variant"):
        ClassificationTask(load_config(DEMO, ["model.name=efficientnet_b0"])).model_name()
    with pytest.raises(ConfigError, match="model.name: 'resnet_nope' is not a timm model"):
        ClassificationTask(load_config(DEMO, ["model.name=resnet_nope"])).model_name()
    with pytest.raises(ConfigError, match="data.format: 'coco' is not a classification format"):
        ClassificationTask(load_config(DEMO, ["data.format=coco"]))
    with pytest.raises(ConfigError, match="model.kwargs.num_classes"):
        ClassificationTask(load_config(DEMO, ["model.kwargs.num_classes=3"])).build_model()


def test_pretrained_file_identity_se_keeps_the_function_and_head_rule(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model("resnet10t", num_classes=4).eval()
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for m in base.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    file = tmp_path / "base.pth"
    torch.save({"model": base.state_dict(), "epoch": 3}, file)  # a checkpoint of this package's layout
    cfg = load_config(DEMO, [f"model.pretrained_backbone={file}", "model.num_classes=4"])
    model = ClassificationTask(cfg).build_model().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert se_plugins.has_se(model) and torch.equal(model(x), base(x))  # identity SE: exactly the base
    imagenet = timm.create_model("resnet10t", num_classes=1000)
    torch.save(imagenet.state_dict(), file)
    model = ClassificationTask(cfg).build_model()
    assert model.fc.weight.shape == (4, 512)  # a 1000-class head does not fit: a new head
    assert torch.equal(model.conv1[0].weight, imagenet.conv1[0].weight)
    missing = load_config(DEMO, [f"model.pretrained_backbone={tmp_path / 'no.pth'}", "model.num_classes=4"])
    with pytest.raises(ConfigError, match=r"no\.pth: file not found"):
        ClassificationTask(missing).build_model()


def test_cli_bad_image_is_one_line_naming_the_file(trained, tmp_path, capsys):
    root, run, overrides = trained
    copy = tmp_path / "copy"
    for split in ("train", "val"):
        for p in (root / split).rglob("*.jpg"):
            dest = copy / p.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(p.read_bytes())
    broken = copy / "val" / "star" / "val_000004.jpg"
    broken.write_bytes(b"\x00" * 10)
    args = [*overrides, "data.format=imagefolder", f"data.root={copy}", f"output_dir={tmp_path / 'r'}"]
    assert main(["eval", str(DEMO), "--checkpoint", str(run / "best.pth"), "--set", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("se-plugins: error: ") and "val_000004.jpg: cannot read image" in err[0]
    assert main(["train", str(DEMO), "--set", *args, f"data.root={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing/train: image folder not found" in err[0]


def test_np_seed_independent_shapes(tmp_path):
    """The generator uses its own random streams: global NumPy state does not change the bytes."""
    np.random.seed(123)
    a = make_shapes_classification(tmp_path / "a", num_train=4, num_val=0, image_size=SIZE)
    np.random.seed(456)
    b = make_shapes_classification(tmp_path / "b", num_train=4, num_val=0, image_size=SIZE)
    assert _files(a) == _files(b)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "classification").glob("*.yaml")))
def test_classification_configs_load(name):
    cfg = load_config(REPO / "configs" / "classification" / name)
    task = ClassificationTask(cfg)
    assert cfg.task == "classification" and task.model_name().removeprefix("se_plugin_") in ("resnet10t", "resnet50")
    assert task.model_name().startswith("se_plugin_") == cfg.model.se.enabled


def test_make_shapes_cli_classification_writes_the_same_set(tmp_path, capsys):
    args = ["--num-train", "4", "--num-val", "2", "--image-size", str(SIZE), "--seed", "5", "--classification"]
    assert main(["make-shapes", str(tmp_path / "cli"), *args]) == 0
    assert f"train: {tmp_path / 'cli' / 'train'}" in capsys.readouterr().out
    api = make_shapes_classification(tmp_path / "api", num_train=4, num_val=2, image_size=SIZE, seed=5)
    assert _files(tmp_path / "cli") == _files(api)


def _ddp_eval_worker(rank: int, world_size: int, init_file: str, overrides: list[str], out_dir: str) -> None:
    from se_plugins.engine.distributed import DistInfo

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        task = ClassificationTask(load_config(DEMO, overrides))
        task.dist = DistInfo(rank=rank, world_size=world_size)
        val = task.build_val_dataset()
        loader = task.build_val_loader(val, distributed=True)
        assert len(loader.sampler) < len(val)  # each rank sees a shard
        torch.manual_seed(0)
        model = task.build_model().eval()
        with torch.no_grad():
            torch.save(task.evaluate(model, loader, torch.device("cpu")), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_evaluation_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    overrides = [
        *tiny_overrides(tmp_path / "shapes", tmp_path / "run"),
        "data.shapes.num_val=9",
        "model.se.init=random",
    ]
    make_shapes_classification(tmp_path / "shapes", num_train=16, num_val=9, image_size=SIZE)
    mp.spawn(_ddp_eval_worker, args=(2, str(tmp_path / "init"), overrides, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    task = ClassificationTask(load_config(DEMO, overrides))
    val = task.build_val_dataset()
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():
        single = task.evaluate(model, task.build_val_loader(val, False), torch.device("cpu"))
    assert rank0 == single and 0.0 < single["top1"] < 1.0

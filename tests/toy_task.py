"""A tiny real task for the engine tests: classify which quadrant of a noisy 3x8x8 image holds a bright spot.

Used through ``task: toy_task:ToyTask`` (``tests/`` on ``sys.path``). Knobs in ``model.kwargs``:

- ``num_train`` / ``num_val``: dataset sizes (default 64 / 32);
- ``nan_at_call``: the N-th ``train_step`` call (1-based) returns a NaN loss;
- ``crash_at_call``: the N-th ``train_step`` call raises ``RuntimeError`` (a simulated crash);
- ``dump_dir``: ``evaluate`` saves this rank's weights to ``dump_dir/rank{R}.pt`` (DDP test);
- ``nan_metric``: ``evaluate`` also returns ``"undefined": nan`` (a metric with nothing to measure).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from se_plugins.engine.distributed import all_gather_object
from se_plugins.engine.tasks import Task, move_to


class QuadrantDataset(Dataset):
    """``n`` images (unit noise + a faint 2x2 spot of +0.8 in one quadrant) and their quadrant label 0..3."""

    def __init__(self, n: int, seed: int, augment: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        self.images = torch.randn(n, 3, 8, 8, generator=g)
        for i, label in enumerate(self.labels.tolist()):
            r, c = divmod(label, 2)
            self.images[i, :, r * 4 + 1 : r * 4 + 3, c * 4 + 1 : c * 4 + 3] += 0.8
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.augment:  # draws from the global torch RNG: resume must restore it
            image = image + 0.1 * torch.randn(image.shape)
        return image, self.labels[i]


class ToyNet(nn.Module):
    """Conv-BN-ReLU, strided conv, dropout, linear: BN buffers and dropout RNG exercise the engine."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(self.drop(x.flatten(1)))


class ToyTask(Task):
    """Quadrant classification; ``main_metric`` is accuracy."""

    main_metric = "accuracy"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.options = dict(cfg.model.kwargs)
        self.calls = 0

    def build_model(self) -> nn.Module:
        return ToyNet()

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        train = QuadrantDataset(self.options.get("num_train", 64), seed=1, augment=True)
        val = QuadrantDataset(self.options.get("num_val", 32), seed=2, augment=False)
        return train, val

    def train_step(self, model: nn.Module, batch, device: torch.device) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == self.options.get("crash_at_call"):
            raise RuntimeError("simulated crash")
        images, labels = move_to(batch, device)
        logits = model(images)
        loss_ce = F.cross_entropy(logits, labels)
        loss_l2 = 1e-4 * logits.pow(2).mean()
        if self.calls == self.options.get("nan_at_call"):
            loss_ce = loss_ce * float("nan")
        return {"loss": loss_ce + loss_l2, "loss_ce": loss_ce, "loss_l2": loss_l2}

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        correct, total, loss_sum = 0, 0, 0.0
        for images, labels in loader:
            logits = model(images.to(device)).cpu()
            correct += int((logits.argmax(1) == labels).sum())
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            total += len(labels)
        if "dump_dir" in self.options:
            path = Path(self.options["dump_dir"]) / f"rank{self.dist.rank}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        parts = all_gather_object((correct, total, loss_sum))
        total = sum(p[1] for p in parts)
        metrics = {"accuracy": sum(p[0] for p in parts) / total, "val_loss": sum(p[2] for p in parts) / total}
        if self.options.get("nan_metric"):
            metrics["undefined"] = float("nan")
        return metrics

    def draw_predictions(self, model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike, num: int) -> list[Path]:
        files = []
        for i in range(min(num, len(dataset))):
            image, label = dataset[i]
            pred = int(model(image[None].to(self.device)).argmax(1))
            pixels = ((image - image.min()) / (image.max() - image.min()) * 255).byte().permute(1, 2, 0).numpy()
            path = Path(out_dir) / f"{i:03d}_gt{int(label)}_pred{pred}.png"
            Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(path)
            files.append(path)
        return files

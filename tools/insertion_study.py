#!/usr/bin/env python
"""Insertion study: what inserting SE into a trained model does, at step 0 and during fine-tuning.

1. **base**: train the config's model without SE (``model.se.enabled=false``) for ``--base-epochs``; its
   ``last.pth`` is the trained base (reused when the study folder already has it).
2. Three **arms**, each started from the base weights: ``no_se`` (the base itself), ``identity`` (SE inserted with
   ``init="identity"``) and ``random`` (SE with the paper's random init). For each of ``--seeds``: evaluate the
   arm's model at step 0, then fine-tune it for ``--finetune-epochs`` (evaluating after every epoch) with the
   config's optimiser settings and ``--finetune-set`` overrides (e.g. a lower ``train.lr``; ``--set`` applies to
   every run, ``--base-set`` to the base only).
3. Output in ``--out``: ``study.json`` (every evaluation), ``study.md`` (main metric at step 0 and at the end,
   mean ± std over seeds) and ``study.png`` (main metric vs fine-tuning step, mean ± std per arm).

By design the identity arm equals the no-SE arm exactly at step 0 (the SE gates are exactly 1); the random arm
starts with every gate near 0.5, i.e. a different function. Seeds change the random SE init and the data order.
Each arm's step-0 predictions on the validation set are also compared with the base model's (classification:
logits; detection: boxes, scores and labels per image).

The arms load the base's whole model through the task's own option (``WEIGHTS_KEY``): classification's
``model.pretrained_backbone`` (timm's pretrained loading), detection's builder keyword ``weights_file``
(``model.kwargs.weights_file``). Both load every base key strictly and keep the init of the SE modules the file
lacks.

Examples (the demos; ``OMP_NUM_THREADS=1`` on a shared CPU)::

    python tools/insertion_study.py configs/classification/shapes_resnet10t.yaml --out runs/insertion_study \\
        --seeds 0 1 2 --finetune-epochs 4 --finetune-set train.lr=0.001 train.warmup_iters=0
    python tools/insertion_study.py configs/detection/shapes_fasterrcnn_r18.yaml --out runs/insertion_study_det \\
        --seeds 0 1 2 --finetune-epochs 2 --finetune-set train.lr=0.0002 train.warmup_iters=0 \\
        train.max_iters_per_epoch=60 model.trainable_backbone_layers=5

(detector weights count as trained: without ``model.trainable_backbone_layers`` the timm route would freeze the
stem, torchvision's rule; 5 = the stem and all four stages train, as in the base training.)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from se_plugins.atomic import atomic_write_text  # noqa: E402
from se_plugins.engine.checkpoint import load_model_weights, save_checkpoint  # noqa: E402
from se_plugins.engine.config import apply_overrides, load_config  # noqa: E402
from se_plugins.engine.trainer import Trainer, seed_everything  # noqa: E402
from se_plugins.errors import ConfigError, SEPluginsError  # noqa: E402

ARMS: dict[str, list[str]] = {
    "no_se": ["model.se.enabled=false"],
    "identity": ["model.se.enabled=true", "model.se.init=identity"],
    "random": ["model.se.enabled=true", "model.se.init=random"],
}
"""The study's arms and the config overrides that make them."""

WEIGHTS_KEY: dict[str, str] = {
    "classification": "model.pretrained_backbone",
    "detection": "model.kwargs.weights_file",
}
"""Per task, the config key that loads a whole model's weights (SE modules the file lacks keep their init)."""

logger = logging.getLogger("se_plugins.insertion_study")


def base_config(config: str | Path, out: Path, overrides: Sequence[str], epochs: int | None) -> DictConfig:
    """The base model's config: the given one without SE, writing into ``out/base``."""
    extra = [*overrides, *ARMS["no_se"], f"output_dir={out / 'base'}"]
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    return load_config(config, extra)


def with_weights(cfg: DictConfig, weights: Path) -> DictConfig:
    """``cfg`` loading its whole model from ``weights`` (the task's ``WEIGHTS_KEY``)."""
    if cfg.task not in WEIGHTS_KEY:
        raise ConfigError(f"task {cfg.task}: no whole-model weights option; the study runs {', '.join(WEIGHTS_KEY)}")
    return apply_overrides(cfg, [f"{WEIGHTS_KEY[cfg.task]}={weights}"])


def arm_config(
    config: str | Path, out: Path, overrides: Sequence[str], arm: str, seed: int, weights: Path, epochs: int
) -> DictConfig:
    """One arm's fine-tuning config: started from ``weights``, evaluated after every epoch."""
    extra = [
        *overrides,
        *ARMS[arm],
        f"seed={seed}",
        f"output_dir={out / f'{arm}_seed{seed}'}",
        f"train.epochs={epochs}",
        "train.eval_every=1",
        "train.num_vis=0",
    ]
    return with_weights(load_config(config, extra), weights)


def train_base(cfg: DictConfig) -> Path:
    """Train the base model (or reuse a finished run); return its final weights (``last.pth``)."""
    last = Path(cfg.output_dir) / "last.pth"
    done = Path(cfg.output_dir) / "base_done.json"
    if last.is_file() and done.is_file():
        logger.info(f"base: reusing {last}")
        return last
    metrics = Trainer(cfg).fit()
    atomic_write_text(done, json.dumps(metrics, indent=1) + "\n")
    return last


def step0_model(cfg: DictConfig) -> torch.nn.Module:
    """The arm's model before any fine-tuning step: the base weights, SE inserted as configured."""
    trainer = Trainer(cfg)
    seed_everything(cfg.seed)
    return trainer.task.build_model()


Predictions = torch.Tensor | list[dict[str, torch.Tensor]]
"""Validation predictions: classification logits ``[N, K]``; detection ``boxes``/``scores``/``labels`` per image."""


@torch.no_grad()
def validation_predictions(cfg: DictConfig, weights: Path) -> Predictions:
    """The config's model with ``weights`` (loaded strictly) on the validation set (see ``Predictions``)."""
    trainer = Trainer(cfg)
    task = trainer.task
    model = task.build_model()
    load_model_weights(model, weights)
    model.to(trainer.device).eval()
    loader = task.build_val_loader(task.build_val_dataset(), distributed=False)
    if cfg.task == "detection":
        return [p for images, _ in loader for p in task.predict(model, images, trainer.device)]
    return torch.cat([task.predict(model, images).cpu() for images, _ in loader])


def compare_predictions(predictions: Predictions, reference: Predictions) -> dict[str, float]:
    """How far a model's validation predictions are from the base model's.

    ``agreement``: classification, the fraction of equal top-1 predictions (with ``max_abs_logit_diff``);
    detection, the fraction of images whose detections (boxes, scores, labels) are all exactly equal.
    """
    if isinstance(reference, torch.Tensor):
        assert isinstance(predictions, torch.Tensor)
        return {
            "agreement": float((predictions.argmax(1) == reference.argmax(1)).double().mean()),
            "max_abs_logit_diff": float((predictions - reference).abs().max()),
        }
    same = [
        all(torch.equal(p[k], r[k]) for k in ("boxes", "scores", "labels"))
        for p, r in zip(predictions, reference, strict=True)
    ]
    return {"agreement": sum(same) / len(same)}


def run_arm(cfg: DictConfig, base_predictions: Predictions | None = None) -> dict[str, Any]:
    """Evaluate one arm at step 0, fine-tune it, return its curve ``[(step, metrics), ...]``.

    With ``base_predictions`` (the base model's, see ``validation_predictions``) the step-0 model's predictions
    are compared to them (``step0_vs_base``, see ``compare_predictions``).
    """
    out = Path(cfg.output_dir)
    model = step0_model(cfg)
    step0 = save_checkpoint({"model": model.state_dict()}, out / "step0.pth")
    metrics0 = Trainer(cfg).evaluate(step0)
    versus = None
    if base_predictions is not None:
        versus = compare_predictions(validation_predictions(cfg, step0), base_predictions)
    # fine-tune from exactly the evaluated step-0 weights (the random SE init included)
    ft_cfg = with_weights(cfg, step0)
    t0 = time.perf_counter()
    trainer = Trainer(ft_cfg)
    trainer.fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": 0, **metrics0}] + [
        {k: v for k, v in r.items() if k != "type"} for r in records if r.get("type") == "eval"
    ]
    result = {"main_metric": trainer.task.main_metric, "curve": curve, "finetune_s": time.perf_counter() - t0}
    if versus is not None:
        result["step0_vs_base"] = versus
    return result


def summarize(results: dict[str, dict[int, dict[str, Any]]], metric: str) -> list[dict[str, Any]]:
    """Per arm: the metric at step 0 and at the end, mean and std over seeds."""
    rows = []
    for arm, by_seed in results.items():
        start = [r["curve"][0][metric] for r in by_seed.values()]
        end = [r["curve"][-1][metric] for r in by_seed.values()]
        row = {"arm": arm, "seeds": len(by_seed), "step0": _mean_std(start), "final": _mean_std(end)}
        if all("step0_vs_base" in r for r in by_seed.values()):
            row["agreement"] = _mean_std([r["step0_vs_base"]["agreement"] for r in by_seed.values()])
            if all("max_abs_logit_diff" in r["step0_vs_base"] for r in by_seed.values()):
                row["max_abs_logit_diff"] = max(r["step0_vs_base"]["max_abs_logit_diff"] for r in by_seed.values())
        rows.append(row)
    return rows


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "values": list(values)}


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The summary as a Markdown table (mean ± sample std over seeds; step-0 agreement with the base if known).

    The agreement column is the fraction of validation images with the base's top-1 prediction (classification,
    next to the max |logit difference|) or with exactly the base's detections (detection).
    """
    agreement = all("agreement" in r for r in rows)
    logits = agreement and all("max_abs_logit_diff" in r for r in rows)
    head = f"| arm | seeds | {metric} at step 0 | {metric} after fine-tuning |"
    if logits:
        head += " step-0 predictions = base | step-0 max abs logit diff |"
    elif agreement:
        head += " step-0 detections = base |"
    lines = [head, "| --- " * (head.count("|") - 1) + "|"]
    for r in rows:
        s, f = r["step0"], r["final"]
        line = f"| {r['arm']} | {r['seeds']} | {s['mean']:.4f} ± {s['std']:.4f} | {f['mean']:.4f} ± {f['std']:.4f} |"
        if agreement:
            line += f" {r['agreement']['mean']:.4f} |"
        if logits:
            line += f" {r['max_abs_logit_diff']:.4g} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot_study(results: dict[str, dict[int, dict[str, Any]]], metric: str, path: Path, title: str) -> Path:
    """PNG of ``metric`` vs fine-tuning step: each seed thin, the mean ± std band per arm."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from se_plugins.atomic import atomic_write_bytes

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colours = {"no_se": "tab:gray", "identity": "tab:blue", "random": "tab:red"}
    for arm, by_seed in results.items():
        curves = [r["curve"] for r in by_seed.values()]
        steps = np.array([p["step"] for p in curves[0]])
        values = np.array([[p[metric] for p in c] for c in curves])
        for v in values:
            ax.plot(steps, v, color=colours.get(arm), alpha=0.3, lw=0.8)
        mean = values.mean(0)
        std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
        ax.plot(steps, mean, "o-", color=colours.get(arm), ms=3, label=f"{arm} ({len(values)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, color=colours.get(arm), alpha=0.15)
    ax.set(xlabel="fine-tuning step (0 = right after insertion)", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def run_study(
    config: str | Path,
    out: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    base_epochs: int | None = None,
    finetune_epochs: int = 4,
    overrides: Sequence[str] = (),
    base_overrides: Sequence[str] = (),
    finetune_overrides: Sequence[str] = (),
    arms: Sequence[str] = tuple(ARMS),
) -> dict[str, Any]:
    """Run the whole study (see the module docstring); return what ``study.json`` holds.

    Args:
        config: The base model's YAML config (a task of ``WEIGHTS_KEY``: classification or detection).
        out: Study folder.
        seeds: Seeds per arm.
        base_epochs: Base training epochs (default: the config's).
        finetune_epochs: Fine-tuning epochs per arm (one evaluation after each).
        overrides: ``key=value`` overrides for every run (e.g. ``data.root``).
        base_overrides: Overrides for the base training only.
        finetune_overrides: Overrides for the fine-tuning runs only (e.g. ``train.lr=0.001``).
        arms: Which of ``ARMS`` to run.
    """
    out = Path(out)
    t0 = time.perf_counter()
    weights = train_base(base_config(config, out, [*overrides, *base_overrides], base_epochs))
    base_s = time.perf_counter() - t0
    base_cfg = base_config(config, out, [*overrides, *base_overrides], base_epochs)
    base_predictions = validation_predictions(base_cfg, weights)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    metric = ""
    for arm in arms:
        for seed in seeds:
            logger.info(f"arm {arm}, seed {seed}")
            cfg = arm_config(config, out, [*overrides, *finetune_overrides], arm, seed, weights, finetune_epochs)
            result = run_arm(cfg, base_predictions)
            results.setdefault(arm, {})[seed] = result
            metric = result["main_metric"]
    rows = summarize(results, metric)
    exact = None
    if "identity" in results and "no_se" in results:
        exact = all(results["identity"][s]["curve"][0] == results["no_se"][s]["curve"][0] for s in seeds)
    report = {
        "config": str(config),
        "overrides": list(overrides),
        "base_overrides": list(base_overrides),
        "finetune_overrides": list(finetune_overrides),
        "identity_equals_no_se_at_step0": exact,
        "base_weights": str(weights),
        "metric": metric,
        "summary": rows,
        "results": {arm: {str(s): r for s, r in by_seed.items()} for arm, by_seed in results.items()},
        "base_s": base_s,
        "total_s": time.perf_counter() - t0,
    }
    atomic_write_text(out / "study.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "study.md", markdown_table(rows, metric))
    plot_study(results, metric, out / "study.png", f"SE insertion into a trained {Path(config).stem}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config of the base model (SE options are set per arm)")
    parser.add_argument("--out", required=True, help="study folder (base/, <arm>_seed<s>/, study.*)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per arm (default 0 1 2)")
    parser.add_argument("--base-epochs", type=int, help="epochs of the base training (default: the config's)")
    parser.add_argument("--finetune-epochs", type=int, default=4, help="fine-tuning epochs per arm (default 4)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="overrides for every run")
    parser.add_argument("--base-set", dest="base_overrides", nargs="+", default=[], help="overrides for the base only")
    parser.add_argument(
        "--finetune-set", dest="finetune_overrides", nargs="+", default=[], help="overrides for the fine-tuning only"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("timm").setLevel(logging.WARNING)  # one "loaded weights" line per model build otherwise
    try:
        report = run_study(
            args.config,
            args.out,
            args.seeds,
            args.base_epochs,
            args.finetune_epochs,
            args.overrides,
            args.base_overrides,
            args.finetune_overrides,
            args.arms,
        )
    except SEPluginsError as e:
        print(f"insertion_study: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(markdown_table(report["summary"], report["metric"]), end="")
    print(f"wrote {Path(args.out) / 'study.md'}, study.json, study.png ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

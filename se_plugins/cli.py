"""The ``se-plugins`` command line: train, check-data, eval, eval-results, configs, make-shapes, benchmark,
excitations.

Usage::

    se-plugins train CONFIG [--set key=value ...] [--resume CKPT|auto [--resume-override]]   # CONFIG: file or name
    se-plugins check-data CONFIG [--set key=value ...] [--max-images N] [--samples N]
    se-plugins eval CONFIG --checkpoint CKPT [--set key=value ...] [--out JSON] [--vis N]
    se-plugins eval-results --annotations GT.json --results DT.json [--iou-type bbox|segm] [--out JSON]
    se-plugins configs [NAME]                  # list the built-in configs, or print one (to copy and edit)
    se-plugins --version
    se-plugins make-shapes OUT_DIR [--num-train N] [--num-val N] [--image-size S] [--seed S]
    se-plugins benchmark ...
    se-plugins excitations CONFIG --checkpoint CKPT [--blocks B ...] [--classes C ...] [--out DIR]
    torchrun --nproc_per_node=N -m se_plugins.cli train CONFIG        # multi-GPU (DDP)

Bad input (config, checkpoint, data) ends with one line ``se-plugins: error: <message>`` and exit code 2; warnings
are printed as one line ``se-plugins: warning: <message>``.
Heavy modules are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from se_plugins import __version__
from se_plugins.errors import SEPluginsError

PROG = "se-plugins"

DELEGATED: dict[str, tuple[str, str, str, str]] = {
    "make-shapes": (
        "se_plugins.data.shapes",
        "add_make_shapes_args",
        "run_make_shapes",
        "write the built-in synthetic shapes data set (COCO + VOC layout)",
    ),
    "benchmark": (
        "se_plugins.benchmark",
        "add_arguments",
        "run",
        "measure speed/memory of SE vs. baseline models",
    ),
    "excitations": (
        "se_plugins.analysis",
        "add_arguments",
        "run_cli",
        "per-class SE gate statistics over the validation set and the paper's excitation plot",
    ),
}
"""Subcommands whose arguments and implementation live in another module: (module, add_args, run, help)."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (delegated subcommands get their arguments when they run)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Squeeze-and-Excitation plug-ins: train and evaluate.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config file, or a built-in config name (see: se-plugins configs)")
    _add_set(train)
    train.add_argument(
        "--resume", metavar="CKPT", help="continue from a last.pth ('auto': <output_dir>/last.pth if any)"
    )
    train.add_argument(
        "--resume-override",
        action="store_true",
        help="with --resume: apply config changes (lr, schedule, data...) that make the run differ from an "
        "uninterrupted one (without it they are refused; more train.epochs is always allowed)",
    )

    check = sub.add_parser("check-data", help="validate the config's data sets as training would build them")
    check.add_argument("config", help="YAML config file")
    _add_set(check)
    check.add_argument("--max-images", type=int, metavar="N", help="decode only the first N images of each split")
    check.add_argument(
        "--samples", type=int, default=4, metavar="N", help="training images drawn into samples.png (default 4)"
    )

    ev = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation data")
    ev.add_argument("config", help="YAML config file, or a built-in config name")
    ev.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint (.pth) to evaluate")
    _add_set(ev)
    ev.add_argument("--out", metavar="JSON", help="metrics file (default: <checkpoint>.eval.json next to it)")
    ev.add_argument("--vis", type=int, default=0, metavar="N", help="also draw predictions on N validation images")

    er = sub.add_parser("eval-results", help="COCO-evaluate a detection results JSON against ground truth")
    er.add_argument("--annotations", required=True, metavar="GT.json", help="COCO ground-truth annotations")
    er.add_argument("--results", required=True, metavar="DT.json", help="COCO results (list of detections)")
    er.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"), help="what to evaluate (default bbox)")
    er.add_argument("--out", metavar="JSON", help="also write the metrics to this JSON file")

    cf = sub.add_parser("configs", help="list the built-in configs (or print one: se-plugins configs NAME)")
    cf.add_argument("name", nargs="?", help="print this config's YAML (e.g. to copy it: ... NAME > my.yaml)")

    for name, (_, _, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)  # arguments parsed by the owning module
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in DELEGATED:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _setup_logging()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command in DELEGATED:
                return _run_delegated(args.command, rest)
            commands = {"train": _train, "eval": _eval, "eval-results": _eval_results, "check-data": _check_data,
                "configs": _configs}
            return commands[args.command](args)
    except SEPluginsError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------- commands


def _train(args: argparse.Namespace) -> int:
    from se_plugins.engine.builtin_configs import resolve_config
    from se_plugins.engine.config import load_config

    cfg = load_config(resolve_config(args.config), args.overrides)
    from se_plugins.engine.distributed import cleanup_distributed
    from se_plugins.engine.logging import format_metrics
    from se_plugins.engine.trainer import Trainer

    resume = args.resume
    if resume == "auto":
        last = Path(cfg.output_dir) / "last.pth"
        resume = last if last.is_file() else None
    if args.resume_override and not args.resume:
        raise SEPluginsError("--resume-override needs --resume")
    try:
        trainer = Trainer(cfg)
        metrics = trainer.fit(resume=resume, resume_override=args.resume_override)
        if trainer.dist.is_main:
            print(format_metrics(metrics, title=f"final metrics ({cfg.output_dir})"))
    finally:
        cleanup_distributed()
    return 0


def _eval(args: argparse.Namespace) -> int:
    from se_plugins.engine.builtin_configs import resolve_config
    from se_plugins.engine.config import load_config

    cfg = load_config(resolve_config(args.config), args.overrides)
    from se_plugins.atomic import atomic_write_bytes
    from se_plugins.engine.distributed import cleanup_distributed
    from se_plugins.engine.logging import format_metrics, strict_json
    from se_plugins.engine.trainer import Trainer

    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.with_name(f"{checkpoint.stem}.eval.json")
    try:
        trainer = Trainer(cfg)
        vis_dir = out.with_name(f"{out.name.removesuffix('.json')}_predictions")
        metrics = trainer.evaluate(checkpoint, num_vis=args.vis, vis_dir=vis_dir)
        if trainer.dist.is_main:
            report = {"checkpoint": str(checkpoint), "config": str(args.config), "metrics": metrics}
            atomic_write_bytes(out, (strict_json(report) + "\n").encode("utf-8"))  # NaN -> null
            print(format_metrics(metrics, title=f"{checkpoint}"))
            print(f"metrics written to {out}")
    finally:
        cleanup_distributed()
    return 0


def _eval_results(args: argparse.Namespace) -> int:
    from se_plugins.atomic import atomic_write_bytes
    from se_plugins.engine.evaluation import evaluate_coco_files
    from se_plugins.engine.logging import format_metrics, strict_json

    metrics = evaluate_coco_files(args.annotations, args.results, iou_type=args.iou_type)
    print(format_metrics(metrics, title=f"{args.results} vs {args.annotations} ({args.iou_type})"))
    if args.out:
        atomic_write_bytes(args.out, (strict_json(metrics) + "\n").encode("utf-8"))
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from se_plugins.engine.builtin_configs import resolve_config
    from se_plugins.engine.config import load_config

    cfg = load_config(resolve_config(args.config), args.overrides)
    from se_plugins.data.check import check_datasets, format_reports, write_figures
    from se_plugins.engine.tasks import build_task

    task = build_task(cfg)
    datasets = dict(zip(("train", "val"), task.build_datasets(), strict=True))
    if callable(getattr(task, "num_classes", None)):
        task.num_classes()  # detection: model.num_classes against the data's classes
    reports = check_datasets(datasets, decode=True, max_images=args.max_images)
    print(format_reports(reports))
    files = write_figures(reports, datasets, Path(cfg.output_dir) / "check-data", num_samples=args.samples)
    for path in files:
        print(f"wrote {path}")
    return 2 if any(r.num_errors for r in reports.values()) else 0


def _configs(args: argparse.Namespace) -> int:
    from se_plugins.engine.builtin_configs import builtin_configs, configs_dir, resolve_config

    if args.name:
        sys.stdout.write(resolve_config(args.name).read_text(encoding="utf-8"))
        return 0
    configs = builtin_configs()
    width = max([len(c.name) for c in configs] + [4])
    task_width = max([len(c.task) for c in configs] + [4])
    print(f"{'name':{width}}  {'task':{task_width}}  description")
    for c in configs:
        print(f"{c.name:{width}}  {c.task:{task_width}}  {c.description}")
    print(f"({len(configs)} configs in {configs_dir()}; use: {PROG} train NAME, {PROG} configs NAME > my.yaml)")
    return 0


def _run_delegated(command: str, rest: list[str]) -> int:
    module_name, add_name, run_name, help_text = DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # the module exists but one of its imports is missing: show the real cause
            raise
        raise SEPluginsError(f"'{command}' is not available in this installation ({module_name} is missing)") from None
    parser = argparse.ArgumentParser(prog=f"{PROG} {command}", description=help_text)
    getattr(module, add_name)(parser)
    args = parser.parse_args(rest)
    try:
        result = getattr(module, run_name)(args)
    except ValueError as e:  # these modules report bad arguments as ValueError
        raise SEPluginsError(str(e)) from None
    return result if isinstance(result, int) else 0


# ---------------------------------------------------------------------------------------------- helpers


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.lr=0.01 train.epochs=2 (repeatable)",
    )


def _setup_logging() -> None:
    """Engine messages to stdout (rank 0 only under torchrun), unless the application configured logging."""
    log = logging.getLogger("se_plugins")
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings as one line ``se-plugins: warning: <message>`` on stderr (no source line)."""
    print(f"{PROG}: warning: {_one_line(message) if isinstance(message, Warning) else message}", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())

"""Channel statistics of a config's training images: the ``data.mean`` / ``data.std`` to paste into it.

The hook for a data-checking command (``add_arguments`` / ``run`` in the style of ``cli.DELEGATED``), and on its own::

    python -m se_plugins.engine.channel_stats CONFIG [--set key=value ...] [--max-images N]

The training set is built by the config's task (same reader: ``data.channels``, ``data.alpha``, ``data.intensity``)
with its augmentation switched off, so the numbers are those of the decoded, intensity-normalised images.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from se_plugins.data.stats import ChannelStats, channel_stats


def config_channel_stats(cfg: DictConfig, max_images: int | None = None) -> ChannelStats:
    """Per-channel mean/std over the first ``max_images`` (None: all) training images of ``cfg``.

    Raises:
        SEPluginsError: the config's data cannot be read (one line naming the file or key).
    """
    from se_plugins.engine.tasks import build_task

    cfg = copy.deepcopy(cfg)
    cfg.data.mean = cfg.data.std = None  # the statistics are what is being computed
    task = build_task(cfg)
    train_set, _ = task.build_datasets()
    dataset = _without_transforms(train_set)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    return channel_stats(_images(dataset, n))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's arguments: ``CONFIG [--set ...] [--max-images N]``."""
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-images", type=int, default=None, metavar="N", help="use the first N training images")
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the statistics as ``data:`` lines for the config; returns 0."""
    from se_plugins.engine.config import load_config

    cfg = load_config(args.config, args.overrides)
    stats = config_channel_stats(cfg, args.max_images)
    print(f"# {stats.num_images} training images of {args.config}, {stats.num_pixels} pixels per channel")
    print(stats.as_yaml(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m se_plugins.engine.channel_stats``: bad input ends with one line and exit code 2."""
    from se_plugins.errors import SEPluginsError

    parser = add_arguments(argparse.ArgumentParser(prog="python -m se_plugins.engine.channel_stats"))
    try:
        return run(parser.parse_args(argv))
    except SEPluginsError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _without_transforms(dataset: Any) -> Any:
    """A shallow copy of the (wrapped) data set that returns images as decoded (no augmentation)."""
    inner = getattr(dataset, "dataset", dataset)  # the segmentation task's error-reporting wrapper
    plain = copy.copy(inner)
    if hasattr(plain, "transforms"):
        plain.transforms = None
    return plain


def _images(dataset: Any, n: int) -> Iterator[torch.Tensor]:
    for i in range(n):
        yield dataset[i][0]


if __name__ == "__main__":
    raise SystemExit(main())

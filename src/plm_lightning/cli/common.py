"""What every entry point shares: loading the config, or one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from plm_lightning.config import ConfigError, load_config


def fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def config_or_none(prog: str, config: str, overrides: Sequence[str], check_data: bool = True) -> DictConfig | None:
    """The validated config, or None after printing the one-line error (callers return 2)."""
    try:
        return load_config(config, overrides, check_data=check_data)
    except ConfigError as exc:
        fail(prog, str(exc))
        return None


SEEDS_HELP = "a count N (seeds 0..N-1), a list (0,1,2) or a range (3-5)"


def parse_seeds(text: str) -> list[int]:
    """--seeds: ``5`` is five seeds 0..4, ``0,1,2`` those seeds, ``3-5`` seeds 3, 4 and 5 (argparse type)."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text.lstrip("-"):
            low, high = (int(s) for s in text.split("-"))
            seeds = list(range(low, high + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes {SEEDS_HELP}, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds needs distinct non-negative integers ({SEEDS_HELP}), got {text!r}")
    return seeds


def seed_run(cfg: DictConfig, base: Path, seed: int) -> tuple[Path, dict[str, Any]]:
    """Where seed N of a --seeds request runs (``base/seed-N``) and the config values that make it that run:
    run.seed, run.dir and the W&B group that ties the request's seeds together (logger.group, else base's name).
    One layout for plm-fit --seeds and plm-slurm --seeds."""
    run_dir = base / f"seed-{seed}"
    return run_dir, {"run.seed": int(seed), "run.dir": str(run_dir), "logger.group": cfg.logger.group or base.name}

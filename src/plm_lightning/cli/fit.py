"""plm-fit --config NAME.yaml [overrides...]: train PLM and evaluate zero-shot retrieval.

Overrides: ``a.b=v``, ``--a.b=v`` or ``--a.b v`` (the W&B agent's formats); ``None`` means null.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from typing import Optional, Sequence

from plm_lightning.cli.common import SEEDS_HELP, config_or_none, fail, parse_seeds, seed_run
from plm_lightning.config import to_yaml
from plm_lightning.utils.io import UnsafeOutputError

# Write failures that are the disk's, not a bug's: one line, exit 2.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plm-fit",
        description=__doc__.split("\n\n")[0],
        epilog="example: plm-fit --config digits.yaml optim.lr=3e-4 trainer.max_epochs=5 run.dir=runs/try1",
    )
    parser.add_argument("--config", required=True, help="a YAML file, or the name of a bundled config")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help=f"run the config once per seed, one after another, into RUN_DIR/seed-N/ ({SEEDS_HELP}), "
        "then write the mean +- std table (plm-report) into RUN_DIR",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    # Printing a config needs no data on disk; the dataset folder is checked when a run starts.
    cfg = config_or_none("plm-fit", args.config, overrides, check_data=not args.print_config)
    if cfg is None:
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if args.seeds is not None:
        return fit_seeds(cfg, args.seeds)
    return fit_one(cfg)


def fit_seeds(cfg, seeds: Sequence[int]) -> int:
    """One run per seed into RUN_DIR/seed-N (W&B group: logger.group, else RUN_DIR's name), then plm-report's table
    of them in RUN_DIR. Stops at the first run that fails, with its exit code; finished seeds stay (rerun the same
    command with resume=auto to continue)."""
    if cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        # Lightning's DDP launcher re-runs this command line for the other ranks; one seed per launch keeps them in
        # step (plm-slurm --seeds gives each seed its own job).
        return fail(
            "plm-fit",
            "--seeds runs on one device; with trainer.devices > 1 use plm-slurm --seeds, or one "
            "plm-fit per seed with run.seed=N",
        )
    from plm_lightning.config.loading import override_config
    from plm_lightning.experiment import resolve_run_dir

    base = resolve_run_dir(cfg)
    for i, seed in enumerate(seeds, 1):
        run_dir, values = seed_run(cfg, base, seed)
        print(f"plm-fit: seed {seed} ({i} of {len(seeds)}) -> {run_dir}", flush=True)
        code = fit_one(override_config(cfg, values=values, source="--seeds"))
        if code != 0:
            done = ", ".join(str(s) for s in seeds[: i - 1]) or "none"
            print(f"plm-fit: seed {seed} failed (exit {code}); finished seeds: {done}", file=sys.stderr)
            return code
    from plm_lightning.cli.report import main as report_main

    return report_main([str(base)])


def fit_one(cfg) -> int:
    """Train and evaluate one run; the exit code (0, or 2 / 128 + signal after one line on stderr)."""
    from plm_lightning.data.base import DatasetError
    from plm_lightning.data.images import UnreadableImageError
    from plm_lightning.experiment import fit  # heavy imports only once the config is known to be good
    from plm_lightning.models.backbones import PretrainedWeightsError
    from plm_lightning.models.embedding_module import TrainingDiverged
    from plm_lightning.run_directory import RunDirError

    try:
        fit(cfg)
    except KeyboardInterrupt as exc:
        # Ctrl-C (SIGINT) or SIGTERM: the last finished epoch's checkpoint is intact; 128 + the signal's number, as
        # shells report it (130, 143).
        signum = getattr(exc, "signum", signal.SIGINT)
        where = f" run.dir={cfg.run.dir}" if cfg.run.dir else ""
        fail(
            "plm-fit",
            f"interrupted by {signal.Signals(signum).name}; continue from the last finished epoch with "
            f"resume=auto{where}",
        )
        return 128 + int(signum)
    except (RunDirError, TrainingDiverged) as exc:  # the run folder, the resume checkpoint; NaN/inf in training
        return fail("plm-fit", str(exc))
    except PretrainedWeightsError as exc:  # offline, or a corrupt download: raised before training starts
        return fail("plm-fit", str(exc))
    except DatasetError as exc:  # the dataset folder does not match its metadata / the official counts
        return fail("plm-fit", str(exc).splitlines()[0])
    except UnreadableImageError as exc:
        # From a DataLoader worker the message carries the worker's traceback; its "cannot read image" line says it.
        lines = [ln for ln in str(exc).splitlines() if "cannot read image" in ln] or str(exc).splitlines() or [""]
        message = lines[-1][lines[-1].find("cannot read image") :] if "cannot read image" in lines[-1] else lines[-1]
        return fail("plm-fit", f"{message}; set data.skip_unreadable=true to skip unreadable images")
    except OSError as exc:  # after UnreadableImageError, an OSError too
        if isinstance(exc, UnsafeOutputError):
            return fail("plm-fit", str(exc))
        if exc.errno in _DISK_ERRORS:  # full disk, quota, read-only, ...
            return fail("plm-fit", f"cannot write {exc.filename or 'the run directory'}: {exc.strerror}")
        raise
    return 0


if __name__ == "__main__":  # Lightning's DDP launcher re-executes this module
    sys.exit(main())

"""plm-simreport --config X [overrides] --output report.json: how well each similarity estimator agrees with the
true classes on the nearest-neighbour batches that training builds (purity@k and Pearson r; the paper's Slide 14).

Features: --features raw (input pixels / vectors), initial (the untrained network's teacher), checkpoint (--ckpt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from plm_lightning.cli.common import config_or_none, fail
from plm_lightning.models.similarity_estimator import SIMILARITIES

ALL_ESTIMATORS = SIMILARITIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plm-simreport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a YAML file, or the name of a bundled config")
    parser.add_argument("--output", required=True, help="report JSON path; the histogram PNG goes beside it")
    parser.add_argument(
        "--features",
        choices=("raw", "initial", "checkpoint"),
        default=None,
        help="default: checkpoint when --ckpt is given, else initial",
    )
    parser.add_argument("--ckpt", default=None, help="a checkpoint written by plm-fit")
    parser.add_argument(
        "--estimators", default=",".join(ALL_ESTIMATORS), help=f"comma-separated subset of {','.join(ALL_ESTIMATORS)}"
    )
    parser.add_argument("--max-batches", type=int, default=None, help="use only the first N batches")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_ESTIMATORS]
    prog = "plm-simreport"
    if unknown or not names:
        return fail(prog, f"--estimators: unknown {unknown or names}; choose from {', '.join(ALL_ESTIMATORS)}")
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        return fail(prog, f"--ckpt: file not found: {args.ckpt}")
    features = args.features or ("checkpoint" if args.ckpt else "initial")
    if features == "checkpoint" and args.ckpt is None:
        return fail(prog, "--features checkpoint needs --ckpt PATH")
    cfg = config_or_none(prog, args.config, overrides)
    if cfg is None:
        return 2

    from plm_lightning.analysis.run_simreport import run_simreport

    try:
        report = run_simreport(
            cfg, names, features=features, ckpt=args.ckpt, output=Path(args.output), max_batches=args.max_batches
        )
    except ValueError as exc:
        return fail(prog, str(exc).splitlines()[0])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

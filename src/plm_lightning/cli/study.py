"""plm-study NAME --config X [overrides]: one of the four method studies, writing NAME.csv and NAME.png into run.dir.

NAME: curvature (similarity accuracy vs curvature per estimator), proxies (Recall@1 with and without proxies
across batch sizes), sensitivity (PLM similarity quality vs k, M, tau, m), cost (time vs batch size, dim, proxies).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from plm_lightning.cli.common import config_or_none

NAMES = ("curvature", "proxies", "sensitivity", "cost")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="plm-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=NAMES)
    parser.add_argument("--config", default="synthetic.yaml", help="a YAML file or bundled config name")
    parser.add_argument("--max-batches", type=int, default=None, help="quality studies: first N batches only")
    args, overrides = parser.parse_known_args(argv)
    cfg = config_or_none("plm-study", args.config, overrides)
    if cfg is None:
        return 2
    from plm_lightning.analysis.studies import STUDIES

    out = Path(cfg.run.dir or f"runs/study-{args.study}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_batches": args.max_batches} if args.study in ("curvature", "sensitivity") else {}
    started = time.perf_counter()
    rows = STUDIES[args.study](cfg, out, **kwargs)
    print(f"{args.study}: {len(rows)} rows in {time.perf_counter() - started:.1f} s -> {out / (args.study + '.csv')}, "
          f"{out / (args.study + '.png')}")
    for row in rows:
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

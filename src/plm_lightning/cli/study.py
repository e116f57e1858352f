"""plm-study NAME --config X [overrides]: one of the method studies, writing its CSV and PNG (and for the ladder a
markdown table and a JSON file) into run.dir.

NAME: curvature (similarity accuracy vs curvature per estimator), proxies (Recall@1 with and without proxies
across batch sizes), sensitivity (PLM similarity quality vs k, M, tau, m), cost (time vs batch size, dim, proxies),
ladder (the ablation ladder over seeds: pretraining, PLM, each part removed, the baselines, the supervised bound).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from plm_lightning.cli.common import SEEDS_HELP, config_or_none, fail, parse_seeds

NAMES = ("curvature", "proxies", "sensitivity", "cost", "ladder")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="plm-study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=NAMES)
    parser.add_argument("--config", default="synthetic.yaml", help="a YAML file or bundled config name")
    parser.add_argument("--max-batches", type=int, default=None, help="quality studies: first N batches only")
    parser.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help=f"ladder: {SEEDS_HELP}; default 0,1,2")
    parser.add_argument(
        "--pretrain",
        default="auto",
        help="ladder: the source-task config that pretrains the backbone when model.weights is unset "
        "('auto': <config>_pretrain.yaml if there is one; 'none': no pretraining)",
    )
    parser.add_argument(
        "--pretrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ladder: an override of the pretraining config (repeatable)",
    )
    parser.add_argument(
        "--rungs",
        choices=("ladder", "knobs"),
        default="ladder",
        help="ladder: the ablation ladder, or 'knobs' (one [ours] training default changed at a "
        "time; written as knobs.md etc. beside the ladder's files)",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="RUNG[,RUNG...]",
        help="ladder: run only these rungs of the set, by name or folder slug (e.g. 'PLM,no proxies')",
    )
    args, overrides = parser.parse_known_args(argv)
    cfg = config_or_none("plm-study", args.config, overrides)
    if cfg is None:
        return 2
    from plm_lightning.analysis.studies import STUDIES

    rungs = None
    if args.study == "ladder":
        rungs, error = _selected_rungs(args)
        if error is not None:
            return fail("plm-study", error)
    out = Path(cfg.run.dir or f"runs/study-{args.study}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.study == "ladder":
        return _ladder(cfg, args, out, rungs)
    kwargs = {"max_batches": args.max_batches} if args.study in ("curvature", "sensitivity") else {}
    rows = STUDIES[args.study](cfg, out, **kwargs)
    print(
        f"{args.study}: {len(rows)} rows in {time.perf_counter() - started:.1f} s -> {out / (args.study + '.csv')}, "
        f"{out / (args.study + '.png')}"
    )
    for row in rows:
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


def _selected_rungs(args):
    """The rungs ``--rungs`` / ``--only`` ask for, or the one-line error that says which name is unknown."""
    from plm_lightning.analysis.ladder import RUNG_SETS

    rungs = RUNG_SETS[args.rungs]
    if args.only is not None:
        by_key = {key: r for r in rungs for key in (r.name.lower(), r.slug)}
        wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in by_key]
        if unknown or not wanted:
            names = ", ".join(repr(r.name) for r in rungs)
            return None, (
                f"--only {args.only!r}: no rung named {unknown[0] if unknown else ''!r}; "
                f"the {args.rungs} rungs are {names}"
            )
        rungs = tuple(dict.fromkeys(by_key[w] for w in wanted))
    return rungs, None


def _ladder(cfg, args, out: Path, rungs) -> int:
    from plm_lightning.analysis.ladder import ladder_study, pretrain_config_for

    pretrain_cfg = None
    if args.pretrain != "none" and cfg.model.weights is None:
        name = pretrain_config_for(args.config) if args.pretrain == "auto" else args.pretrain
        if name is not None:
            pretrain_cfg = config_or_none("plm-study", name, args.pretrain_set)
            if pretrain_cfg is None:
                return 2
    try:
        ladder_study(cfg, out, seeds=args.seeds, pretrain_cfg=pretrain_cfg, rungs=rungs, name=args.rungs)
    except Exception as exc:
        from plm_lightning.config import ConfigError
        from plm_lightning.data.base import DatasetError
        from plm_lightning.models.backbones import PretrainedWeightsError

        if isinstance(exc, (ConfigError, DatasetError, PretrainedWeightsError)):
            return fail("plm-study", str(exc).splitlines()[0])
        raise
    name = args.rungs
    print((out / f"{name}.md").read_text())
    print(f"{name}: {out / (name + '.md')}, {name}.csv, {name}.json, {name}.png, {name}_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

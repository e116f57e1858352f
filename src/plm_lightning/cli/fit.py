"""plm-fit --config NAME.yaml [overrides...]: train PLM and evaluate zero-shot retrieval.

Overrides: ``a.b=v``, ``--a.b=v`` or ``--a.b v`` (the W&B agent's formats); ``None`` means null.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from plm_lightning.cli.common import config_or_none
from plm_lightning.config import to_yaml


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plm-fit", description=__doc__.split("\n\n")[0],
        epilog="example: plm-fit --config digits.yaml optim.lr=3e-4 trainer.max_epochs=5 run.dir=runs/try1")
    parser.add_argument("--config", required=True, help="a YAML file, or the name of a bundled config")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    cfg = config_or_none("plm-fit", args.config, overrides)
    if cfg is None:
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from plm_lightning.experiment import fit  # heavy imports only once the config is known to be good

    fit(cfg)
    return 0


if __name__ == "__main__":  # Lightning's DDP launcher re-executes this module
    sys.exit(main())

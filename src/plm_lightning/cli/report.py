"""plm-report RUN_DIR... : the paper's results table from run directories (or folders holding them).

Runs are grouped by config with the seed set aside; each group's row is the mean ± std over its seeds of the last
epoch's metrics (--best: each run's best epoch, labelled so), beside the paper's numbers where the config has them
(paper.metrics) and the difference. Unfinished or missing runs are listed under the table, never averaged.
Writes report.md, report.csv and report.tex into --output (default: the folder the paths share).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from plm_lightning.cli.common import fail


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="plm-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders holding them")
    parser.add_argument("--best", action="store_true", help="each run's best epoch instead of its last (labelled)")
    parser.add_argument("--output", type=Path, default=None, help="folder for report.md/.csv/.tex")
    args = parser.parse_args(argv)
    from plm_lightning.analysis.report import ReportError, csv_text, latex, markdown, report
    from plm_lightning.utils.io import UnsafeOutputError, atomic_write_text

    try:
        rep = report(args.paths, best=args.best)
    except ReportError as exc:
        return fail("plm-report", str(exc))
    if not rep["groups"]:
        listed = "; ".join(f"{r.path}: {r.problem}" for r in rep["left_out"])
        return fail("plm-report", f"no finished run to report ({listed})")
    resolved = [str(p.resolve()) for p in args.paths]
    out = args.output or Path(os.path.commonpath(resolved) if len(resolved) > 1 else resolved[0])
    if out.is_file():
        out = out.parent
    text = markdown(rep)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.md", text)
        atomic_write_text(out / "report.csv", csv_text(rep))
        atomic_write_text(out / "report.tex", latex(rep))
    except (OSError, UnsafeOutputError) as exc:
        return fail("plm-report", f"cannot write the report into {out}: {getattr(exc, 'strerror', None) or exc}")
    print(text)
    print(f"plm-report: {out / 'report.md'}, report.csv, report.tex")
    return 0


if __name__ == "__main__":
    sys.exit(main())

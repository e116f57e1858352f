"""Run a console entry point as a user does: a subprocess of ``python -m plm_lightning.cli.<name>``, W&B offline and
no API key, output captured. Import from a test module after ``sys.path.insert(0, str(Path(__file__).parents[1]))``
(or the matching number of parents): ``from runner import run_cli``."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(name: str, *args: str, cwd=None, timeout: float = 600, env_extra: dict | None = None):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", f"plm_lightning.cli.{name}", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )

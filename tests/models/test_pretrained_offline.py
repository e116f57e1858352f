"""plm-fit without network and without cached weights: exit 2 with one line naming model.pretrained, before any
training starts, and quickly (the download fails fast instead of hanging)."""

import os
import time

from runner import run_cli

UNREACHABLE_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused at once


def test_plm_fit_offline_exits_2_with_one_line(tmp_path):
    # One backbone is enough here: the CLI path is the same for all (test_backbones.py checks torchvision's message).
    backbone = "bn_inception"
    env = dict(os.environ, WANDB_MODE="disabled", TORCH_HOME=str(tmp_path / "torch"), no_proxy="", NO_PROXY="")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = UNREACHABLE_PROXY
    env.pop("PLM_RUN_DIR", None)
    run_dir = tmp_path / "run"
    start = time.monotonic()
    result = run_cli(
        "fit",
        "--config",
        "digits.yaml",
        f"model.backbone={backbone}",
        "model.pretrained=true",
        "data.image_size=64",
        f"run.dir={run_dir}",
        env=env,
        timeout=120,
    )
    assert time.monotonic() - start < 60
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"plm-fit: error: could not download pretrained {backbone} weights: no network")
    assert "model.pretrained=false" in lines[0]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "config.yaml").exists()  # nothing started

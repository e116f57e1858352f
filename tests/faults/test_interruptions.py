"""Interruptions: Ctrl-C and SIGTERM end with exit code 130 / 143 and one line, SIGKILL with nothing; the run
continues with resume=auto; what a kill during a write leaves behind is cleaned at the next start."""

import signal
import subprocess
import sys
import time

import pytest
from conftest import PAUSED, env, error_line, run, snapshot


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_a_signal_ends_the_run_resumably(tmp_path, signum, code):
    """Ctrl-C and SIGTERM: Lightning's graceful shutdown, one line, 128 + the signal; SIGKILL: no last words. In every
    case the last finished epoch's checkpoint is intact and resume=auto continues from it."""
    run_dir = tmp_path / "run"
    args = [
        "--config",
        "digits.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=30",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        "eval.plots=false",
        "data.sampler.batch_size=30",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "plm_lightning.cli.fit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        # a shell's background job starts with SIGINT ignored, and Python keeps it so: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if signum == signal.SIGKILL:
        assert proc.returncode == code
    else:
        line = error_line(result, "plm-fit", code=code)
        assert f"interrupted by {signal.Signals(signum).name}" in line and f"resume=auto run.dir={run_dir}" in line
    resumed = run("fit", *args, "trainer.max_epochs=30", "resume=auto", "trainer.stop_after_epochs=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout


def test_stale_temporaries_of_a_killed_write_are_removed_at_the_next_start(paused_run):
    stale = [
        paused_run / "checkpoints" / ".last.ckpt.k1ll3d.tmp",
        paused_run / ".metrics.json.x1y2.tmp",
        paused_run / "logs" / ".metrics.csv.a9b8.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    mine = paused_run / "checkpoints" / "keep.tmp"  # not one of ours (no leading dot): left alone
    mine.write_text("x")
    result = run("fit", "--config", "digits.yaml", f"run.dir={paused_run}", *PAUSED, "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.exists() for p in stale) and mine.exists()
    assert not [p for p in paused_run.rglob(".*.tmp")]


def test_a_resumed_run_keeps_its_metrics_history(paused_run):
    before = (paused_run / "logs" / "metrics.csv").read_text().splitlines()
    result = run("fit", "--config", "digits.yaml", f"run.dir={paused_run}", *PAUSED, "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    after = (paused_run / "logs" / "metrics.csv").read_text().splitlines()
    assert len(after) > len(before)
    header_before, header_after = before[0].split(","), after[0].split(",")
    assert set(header_before) <= set(header_after)
    assert snapshot(paused_run)["config.yaml"]  # the config is still there

"""SlurmRequeue._requeue: what scontrol's exit means (the whole signal-to-resume path runs on a real SLURM cluster in
tests/slurm/test_slurm_jobs.py)."""

import signal
import subprocess
import warnings

import pytest

from plm_lightning.callbacks.slurm_requeue import SlurmRequeue


@pytest.mark.parametrize(
    "returncode, requeued",
    [
        (0, True),
        # SLURM stops the job once it accepts the requeue and may terminate scontrol with it before it returns.
        (-signal.SIGTERM, True),
        (1, False),  # refused (e.g. a job that is not requeueable)
    ],
)
def test_scontrol_exit_status(monkeypatch, capsys, returncode, requeued):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, returncode, "", "not requeueable" if returncode == 1 else "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    callback = SlurmRequeue(grace_s=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert callback._requeue() is requeued
    assert calls == [["scontrol", "requeue", "42"]] and callback._requeued is requeued
    assert "plm: requeueing SLURM job 42" in capsys.readouterr().out  # said before scontrol can be cut short
    failed = [w for w in caught if "scontrol requeue 42 failed" in str(w.message)]
    assert bool(failed) is (not requeued)

"""Fault injection: what a user meets with bad inputs, hostile files, full disks and interruptions.

Every test asserts the exit code, the one-line message, and that no file of an earlier run changed (hashes before
and after). A finished two-step digits run is made once per session and copied into each test's folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from runner import run_cli

TINY = [
    "trainer.max_steps=2",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "eval.plots=false",
    "data.sampler.batch_size=30",
]
# A two-epoch run of two batches an epoch; with trainer.stop_after_epochs=1 it pauses after epoch 0.
PAUSED = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
    "eval.plots=false",
    "data.sampler.batch_size=30",
]


def env() -> dict:
    e = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    e.pop("WANDB_API_KEY", None)
    return e


def run(cli: str, *args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    return run_cli(cli, *args, timeout=timeout, cwd=cwd, env=env())


def error_line(result: subprocess.CompletedProcess, prog: str, code: int = 2) -> str:
    """The single ``prog: error: ...`` line of stderr; no traceback, the expected exit code."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below ``folder`` (symlinks by their target text)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run("fit", "--config", "digits.yaml", f"run.dir={run_dir}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def _paused(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("paused") / "run"
    result = run("fit", "--config", "digits.yaml", f"run.dir={run_dir}", *PAUSED, "trainer.stop_after_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture
def paused_run(_paused, tmp_path) -> Path:
    """A copy of a run that stopped cleanly after epoch 0 of 2 (resume=auto continues it)."""
    target = tmp_path / "paused"
    shutil.copytree(_paused, target, symlinks=True)
    return target


@pytest.fixture
def old_run(finished_run, tmp_path) -> Path:
    """A copy of the finished run that a test may damage."""
    target = tmp_path / "run"
    shutil.copytree(finished_run, target, symlinks=True)
    return target


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root in a namespace that allows it): for read-only and full disks."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"plm-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode
        == 0
    )
    if ok:
        subprocess.run(["umount", str(probe)], capture_output=True)
    probe.rmdir()
    return ok


@pytest.fixture
def tmpfs(tmp_path):
    """mount(path, size, read_only) -> a tmpfs at ``path``; unmounted after the test. Skips where mounting is not
    allowed (then the read-only and full-disk cases are covered by RLIMIT_FSIZE and chmod where possible)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "1m", read_only: bool = False) -> Path:
        if not can_mount():
            pytest.skip("mounting a tmpfs needs root in a mount namespace that allows it")
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)

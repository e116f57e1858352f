"""A real one-node SLURM cluster on localhost for the end-to-end tests (Debian's slurmctld, slurmd, munge).

The session fixture ``slurm_cluster`` writes a slurm.conf whose state, spool, log and pid files live in temporary
folders, starts munged (as user munge, on its own socket), slurmctld and slurmd on free ports, waits until ``sinfo``
shows the node idle, and stops the daemons by the PIDs it recorded. Own ports and an own munge socket keep it clear of
any other cluster on the machine. Tests skip, with the reason, only when the binaries are not installed; a cluster
that is installed but does not come up is an error (with the daemon logs), not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scontrol", "scancel", "setpriv")
# Job states after which a job never runs again by itself (a requeued job passes through PENDING instead).
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Handles to the running cluster: ``env`` (SLURM_CONF set) and small client helpers."""

    def __init__(self, root: Path, conf: Path, env: dict[str, str], logs: dict[str, Path]):
        self.root, self.conf, self.env, self.logs = root, conf, env, logs

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def sbatch(self, script: str | Path, *options: str) -> str:
        out = self.run("sbatch", "--parsable", *options, str(script)).stdout.strip()
        return out.split(";")[0]

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); empty once the job is forgotten."""
        result = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        if result.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def wait_for_state(self, job_id: str, states: Iterable[str], timeout: float = 120) -> dict[str, str]:
        wanted = set(states)
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in wanted:
                return info
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout:.0f} s: {info}\n{self.daemon_logs()}")

    def daemon_logs(self, tail: int = 40) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-tail:] if path.exists() else ["(no log)"]
            parts.append(f"--- {name} ({path}) ---\n" + "\n".join(text))
        return "\n".join(parts)


def _write_conf(root: Path, munge_socket: Path) -> Path:
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=plmtest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=10
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):  # slurmd, slurmctld, then munged
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    missing = _missing_binaries()
    if missing:
        pytest.skip(
            f"SLURM/munge not installed (missing {', '.join(missing)}); "
            "apt-get install slurmctld slurmd slurm-client munge (see .ci/run)"
        )
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root (SlurmUser=root) and munged as user munge")
    root = tmp_path_factory.mktemp("slurm")
    # munged runs as user munge, which cannot enter pytest's 0700 temporary folders: a folder of its own under /tmp.
    munge_dir = Path(tempfile.mkdtemp(prefix="plm-munge-"))
    shutil.chown(munge_dir, "munge", "munge")
    munge_dir.chmod(0o755)  # munged insists that every client can reach its socket
    munge_socket = munge_dir / "munge.socket"
    conf = _write_conf(root, munge_socket)
    env = dict(os.environ, SLURM_CONF=str(conf))
    logs = {
        "munged": munge_dir / "munged.log",
        "slurmctld": root / "log" / "slurmctld.log",
        "slurmd": root / "log" / "slurmd.log",
        "daemon output": root / "log" / "daemons.out",
    }
    cluster = SlurmCluster(root, conf, env, logs)
    procs: list[subprocess.Popen] = []
    daemon_out = open(root / "log" / "daemons.out", "w")
    try:
        procs.append(
            subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=munge",
                    "--regid=munge",
                    "--init-groups",
                    "munged",
                    "-F",
                    f"--socket={munge_socket}",
                    f"--pid-file={munge_dir / 'munged.pid'}",
                    f"--log-file={logs['munged']}",
                    f"--seed-file={munge_dir / 'munged.seed'}",
                ],
                stdout=daemon_out,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 20
        while not munge_socket.exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start\n{cluster.daemon_logs()}")
            time.sleep(0.1)
        procs.append(
            subprocess.Popen(["slurmctld", "-D", "-f", str(conf)], env=env, stdout=daemon_out, stderr=subprocess.STDOUT)
        )
        procs.append(
            subprocess.Popen(
                ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
                env=env,
                stdout=daemon_out,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 60
        state: Optional[str] = None
        while True:
            result = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=20)
            state = result.stdout.strip()
            if result.returncode == 0 and state == "idle":
                break
            dead = [p.args[0] for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the SLURM node did not become idle (sinfo: {state!r} {result.stderr.strip()!r}; "
                    f"exited: {dead})\n{cluster.daemon_logs()}"
                )
            time.sleep(0.2)
        yield cluster
    finally:
        _stop(procs)
        daemon_out.close()
        shutil.rmtree(munge_dir, ignore_errors=True)

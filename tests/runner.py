"""Run a console entry point as a user does, ``python -m plm_lightning.cli.<name> ARGS``, with its output captured,
W&B offline and no API key.

Every CLI test goes through :func:`run_cli`. A fresh interpreter spends about 10 s importing torch, Lightning and
faiss before the first line of ours runs (measured on 2 cores), which made those imports most of the suite's time.
So by default the command runs in a process forked from a *zygote*: one interpreter per test session that has
imported those modules and done nothing else, then forks one child per command. The child is a real process (its
own pid, working directory, environment, exit code, stdout and stderr files), and it runs the module exactly as
``python -m`` does (``runpy`` with ``__name__ == "__main__"``, ``sys.argv`` set, atexit handlers run).

Why only imports in the zygote: GNU OpenMP's thread pool does not survive ``fork`` (a child of a process that has
run a parallel region can hang), so the zygote never computes anything.

``PLM_TESTS_SUBPROCESS=1`` (or ``fresh=True`` on one call) runs a new interpreter instead, for a check that what the
zygote does is what a shell does. Tests that send signals or need a process's own start-up (warnings printed at
import) use ``fresh=True`` or ``subprocess`` directly.

``tests/conftest.py`` puts ``tests/`` on the import path: ``from runner import run_cli``.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading

# What the zygote imports before it forks: everything slow that a CLI imports at run time.
PRELOAD = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "faiss",
    "wandb",
    "matplotlib.pyplot",
    "plm_lightning.experiment",
    "plm_lightning.cli.fit",
    "plm_lightning.cli.eval",
    "plm_lightning.cli.embed",
    "plm_lightning.cli.search",
    "plm_lightning.cli.study",
    "plm_lightning.cli.simreport",
    "plm_lightning.cli.slurm",
    "plm_lightning.cli.data",
    "plm_lightning.analysis.ladder",
)

_ZYGOTE_SOURCE = r"""
import importlib, json, os, signal, sys, time
requests = os.fdopen(os.dup(0), "r")
replies = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:  # a missing optional module only makes the child import it itself
        print(f"zygote: could not preload {name}: {e!r}", file=sys.stderr)
replies.write("ready\n"); replies.flush()


def child(req):
    requests.close(); replies.close()
    os.setpgid(0, 0)
    os.chdir(req["cwd"])
    os.environ.clear(); os.environ.update(req["env"])
    out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1); os.dup2(err, 2); os.close(out); os.close(err)
    code = 1
    try:
        import runpy
        # As under ``python -m``: the module is not yet imported under its own name (avoids runpy's warning).
        sys.modules.pop(req["module"], None)
        sys.argv = [req["module"], *req["args"]]
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    # What the interpreter does at exit: join non-daemon threads, atexit handlers, flush.
    try:
        import threading
        threading._shutdown()
    except BaseException:
        pass
    try:
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(req)
    deadline = time.monotonic() + req["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reply = {"returncode": os.waitstatus_to_exitcode(status)}
            break
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            reply = {"timeout": True}
            break
        time.sleep(0.02)
    replies.write(json.dumps(reply) + "\n"); replies.flush()
"""


class _Zygote:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE_SOURCE, *PRELOAD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(None, None),
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the test zygote did not start")
        atexit.register(self.stop)
        return proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def run(self, module: str, args: list[str], cwd: str, env: dict, timeout: float) -> tuple[int | None, str, str]:
        with self.lock, tempfile.TemporaryDirectory(prefix="plm-cli-") as tmp:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            request = {
                "module": module,
                "args": args,
                "cwd": cwd,
                "env": env,
                "stdout": os.path.join(tmp, "stdout"),
                "stderr": os.path.join(tmp, "stderr"),
                "timeout": timeout,
            }
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            reply = json.loads(self.proc.stdout.readline())
            with open(request["stdout"], encoding="utf-8", errors="replace") as f:
                stdout = f.read()
            with open(request["stderr"], encoding="utf-8", errors="replace") as f:
                stderr = f.read()
            return (None if reply.get("timeout") else reply["returncode"]), stdout, stderr


_ZYGOTE = _Zygote()


def _env(env: dict | None, env_extra: dict | None) -> dict:
    out = dict(os.environ if env is None else env)
    out.setdefault("WANDB_MODE", "offline")
    out["WANDB_SILENT"] = "true"
    out.pop("WANDB_API_KEY", None)
    out.update(env_extra or {})
    return out


def run_cli(
    name: str,
    *args,
    cwd=None,
    timeout: float = 600,
    env: dict | None = None,
    env_extra: dict | None = None,
    fresh: bool = False,
    preexec_fn=None,
) -> subprocess.CompletedProcess:
    """``python -m plm_lightning.cli.<name> ARGS``: the finished process (``returncode``, ``stdout``, ``stderr``).

    ``env`` replaces this process's environment (default: inherit it), ``env_extra`` adds to it; W&B is offline
    unless the environment says otherwise, and the API key is never passed. Raises ``subprocess.TimeoutExpired``
    after ``timeout`` seconds, as ``subprocess.run`` does. ``preexec_fn`` (e.g. a resource limit) implies ``fresh``.
    """
    module = name if name.startswith("plm_lightning.") else f"plm_lightning.cli.{name}"
    argv = [str(a) for a in args]
    environment = _env(env, env_extra)
    command = [sys.executable, "-m", module, *argv]
    if fresh or preexec_fn is not None or os.environ.get("PLM_TESTS_SUBPROCESS") == "1":
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            cwd=cwd,
            timeout=timeout,
            preexec_fn=preexec_fn,
        )
    returncode, stdout, stderr = _ZYGOTE.run(module, argv, str(cwd or os.getcwd()), environment, timeout)
    if returncode is None:
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(command, returncode, stdout, stderr)

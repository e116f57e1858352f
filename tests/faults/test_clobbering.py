"""No run lost or clobbered: outputs never replace what is not a regular file, a failed resume changes nothing,
a second run into a run's folder is refused (or replaces it cleanly), and a diverged checkpoint is not exported."""

import os
import stat

import numpy as np
import pytest
import torch
from conftest import TINY, error_line, run, snapshot


@pytest.fixture(scope="module")
def embeddings_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "e.npz"
    rng = np.random.default_rng(0)
    np.savez(path, embeddings=rng.normal(size=(40, 8)).astype(np.float32), labels=np.repeat(np.arange(8), 5))
    return path


def test_output_refuses_a_fifo_and_a_device(embeddings_npz, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    line = error_line(run("eval", embeddings_npz, "--output", fifo), "plm-eval")
    assert str(fifo) in line and "FIFO" in line and "not a regular file" in line
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the FIFO
    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    except PermissionError:
        pytest.skip("mknod of a character device needs CAP_MKNOD (the FIFO case above ran)")
    line = error_line(run("eval", embeddings_npz, "--output", device), "plm-eval")
    assert "device" in line and stat.S_ISCHR(os.stat(device).st_mode)


def test_output_writes_through_a_symlink(embeddings_npz, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    result = run("eval", embeddings_npz, "--output", link)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link ...
    assert '"R@1"' in target.read_text()  # ... and its target got the metrics
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    line = error_line(run("eval", embeddings_npz, "--output", loop), "plm-eval")
    assert "symbolic links" in line or "symlink loop" in line


def test_a_failed_resume_changes_nothing(old_run):
    before = snapshot(old_run)
    result = run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY, "model.embedding_dim=32", "resume=auto")
    line = error_line(result, "plm-fit")
    assert "model.embedding_dim" in line and "(64 in the checkpoint, 32 now)" in line
    assert snapshot(old_run) == before


def test_a_second_run_into_a_runs_folder_is_refused(old_run):
    before = snapshot(old_run)
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY), "plm-fit")
    assert "already holds a run" in line and "resume=auto" in line and "run.overwrite=true" in line
    assert snapshot(old_run) == before


def test_overwrite_removes_the_old_run_first(old_run):
    (old_run / "notes.txt").write_text("mine\n")  # not the run's: left alone
    stale = old_run / "checkpoints" / "best-epoch099.ckpt"
    stale.write_bytes(b"an old run's checkpoint")
    result = run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY, "run.overwrite=true", "run.seed=5")
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (old_run / "checkpoints").iterdir())
    assert not stale.exists() and not any("-v1" in n for n in names), names
    assert (old_run / "notes.txt").read_text() == "mine\n"
    assert (
        "seed: 5" in (old_run / "config.yaml").read_text()
        and "overwrite: false" in (old_run / "config.yaml").read_text()
    )


def test_a_diverged_checkpoint_is_neither_exported_nor_searched(old_run, tmp_path):
    ckpt = old_run / "checkpoints" / "last.ckpt"
    export = tmp_path / "export"
    result = run("embed", "--ckpt", ckpt, "--config", "digits.yaml", "--output", export)
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(ckpt, weights_only=True)
    key = next(k for k in state["state_dict"] if k.startswith("student.") and k.endswith("weight"))
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("nan"))
    nan_ckpt = tmp_path / "nan.ckpt"
    torch.save(state, nan_ckpt)
    line = error_line(
        run("embed", "--ckpt", nan_ckpt, "--config", "digits.yaml", "--output", tmp_path / "x"), "plm-embed"
    )
    assert "NaN or inf" in line and key in line and not (tmp_path / "x").exists()
    from PIL import Image

    query = tmp_path / "query.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(query)
    line = error_line(run("search", "--index", export, "--image", query, "--ckpt", nan_ckpt), "plm-search")
    assert "NaN or inf" in line
    before = snapshot(export)
    emb = np.load(export / "embeddings.npy")
    emb[3] = np.nan
    np.save(export / "embeddings.npy", emb)
    line = error_line(run("search", "--index", export, "--index-item", "0"), "plm-search")
    assert "NaN or inf" in line
    assert set(snapshot(export)) == set(before)

"""Inputs that used to end in a traceback: one line naming the file, key or value, exit code 2, nothing changed."""

import os
import resource
import signal

import pytest
import torch
from conftest import PAUSED, TINY, env, error_line, run, snapshot
from omegaconf import OmegaConf
from runner import run_cli


def test_empty_checkpoint_everywhere(old_run, tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    line = error_line(run("eval", "--ckpt", empty, "--config", "digits.yaml"), "plm-eval")
    assert str(empty) in line and "empty" in line
    line = error_line(run("embed", "--ckpt", empty, "--config", "digits.yaml", "--output", tmp_path / "o"), "plm-embed")
    assert "empty" in line
    before = snapshot(old_run)
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY, f"resume={empty}"), "plm-fit")
    assert f"resume={empty}" in line and "empty" in line
    (old_run / "checkpoints" / "last.ckpt").write_bytes(b"")
    before = snapshot(old_run)
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY, "resume=auto"), "plm-fit")
    assert "resume=auto" in line and "last.ckpt" in line and "empty" in line
    assert snapshot(old_run) == before


def test_truncated_or_hostile_last_checkpoint_under_resume_auto(old_run):
    last = old_run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    before = snapshot(old_run)
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY, "resume=auto"), "plm-fit")
    assert "truncated, corrupt or not a torch checkpoint" in line
    assert snapshot(old_run) == before

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"state_dict": Payload()}, last)
    result = run("fit", "--config", "digits.yaml", f"run.dir={old_run}", *TINY, "resume=auto", cwd=old_run)
    line = error_line(result, "plm-fit")
    assert "need code to load" in line and "weights_only=False" not in result.stderr
    assert not (old_run / "pwned").exists()


def test_hostile_checkpoint_message_never_suggests_running_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Payload()}, path)
    for cli, extra in (("eval", []), ("embed", ["--output", tmp_path / "o"])):
        result = run(cli, "--ckpt", path, "--config", "digits.yaml", *extra)
        line = error_line(result, f"plm-{cli}")
        assert "need code to load" in line
        assert "weights_only" not in result.stderr and "executed" not in result.stdout


def test_run_dir_that_is_a_file_or_below_one(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={afile}", *TINY), "plm-fit")
    assert "run.dir" in line and "is a file" in line
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={afile}/sub/run", *TINY), "plm-fit")
    assert f"is below {afile}, which is a file" in line
    assert afile.read_text() == "x"


def test_read_only_run_dir(tmp_path, tmpfs):
    ro = tmpfs(tmp_path / "ro", read_only=True)
    line = error_line(run("fit", "--config", "digits.yaml", f"run.dir={ro}/run", *TINY), "plm-fit")
    assert "cannot be written" in line and "Read-only file system" in line


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_training_is_one_line_and_keeps_the_files(paused_run):
    """The paused run (epoch 0 of 2 done) resumes under a file-size limit below its checkpoint's size: the next
    checkpoint cannot be written. One line, exit 2; metrics.csv and the checkpoints of epoch 0 intact."""
    size = (paused_run / "checkpoints" / "last.ckpt").stat().st_size
    before = snapshot(paused_run)
    metrics_csv = (paused_run / "logs" / "metrics.csv").read_text()
    result = run_cli(
        "fit",
        "--config",
        "digits.yaml",
        f"run.dir={paused_run}",
        *PAUSED,
        "resume=auto",
        env=env(),
        timeout=300,
        preexec_fn=_limit_file_size(size // 2),
    )
    line = error_line(result, "plm-fit")
    assert "File too large" in line or "No space left" in line
    assert (paused_run / "logs" / "metrics.csv").read_text().startswith(metrics_csv.splitlines()[0])
    assert (paused_run / "logs" / "metrics.csv").stat().st_size >= len(metrics_csv)
    after = snapshot(paused_run)
    for name in ("checkpoints/last.ckpt", "checkpoints/best-epoch000.ckpt"):
        assert after[name] == before[name], name
    # config.yaml is rewritten only to record where the (copied) run now lives: resuming may change run.dir
    assert OmegaConf.load(paused_run / "config.yaml").run.dir == str(paused_run)
    assert not list(paused_run.rglob("*.tmp"))


def test_full_tmpfs(tmp_path, tmpfs):
    small = tmpfs(tmp_path / "small", size="300k")
    result = run("fit", "--config", "digits.yaml", f"run.dir={small}/run", *TINY)
    line = error_line(result, "plm-fit")
    assert "No space left on device" in line


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            ["data.glyphs.classes=2", "data.glyphs.images_per_class=3", "data.sampler.batch_size=5"],
            "the glyphs test split has 6 items, so 5 items (each query ranks all the others): "
            "Recall@8 needs at least 8",
        ),
        (
            [
                "data.glyphs.classes=2",
                "data.glyphs.images_per_class=2",
                "data.sampler.batch_size=2",
                "eval.ks=[1]",
                "data.sampler.neighbours_per_seed=1",
                "method.proxies.count=2",
            ],
            None,
        ),
        (
            [
                "data.glyphs.classes=2",
                "data.glyphs.images_per_class=2",
                "data.sampler.batch_size=2",
                "eval.ks=[1]",
                "data.sampler.neighbours_per_seed=1",
            ],
            "method.proxies.count=100 exceeds the 4 images of the glyphs training split",
        ),
    ],
)
def test_test_split_too_small(tmp_path, overrides, needle):
    run_dir = tmp_path / "run"
    result = run("fit", "--config", "glyphs.yaml", f"run.dir={run_dir}", "trainer.max_epochs=1", *overrides)
    if needle is None:  # 4 items with one neighbour each: Recall@1 is fine
        assert result.returncode == 0, result.stderr[-2000:]
        return
    line = error_line(result, "plm-fit")
    assert needle in line and "lower " in line
    assert not run_dir.exists()  # nothing of the run was written


def test_single_item_test_split(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for cls, count in (("a", 4), ("b", 4), ("c", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20, 20), (40 * i, 10, 90)).save(root / cls / f"{i}.png")
    run_dir = tmp_path / "run"
    result = run(
        "fit",
        "--config",
        "folder_resnet50.yaml",
        f"data.root={root}",
        "data.train_classes=[a,b]",
        "model.pretrained=false",
        "data.sampler.batch_size=4",
        "data.sampler.neighbours_per_seed=2",
        "data.image_size=32",
        "data.resize=36",
        f"run.dir={run_dir}",
        "eval.ks=[1]",
        "data.loader.num_workers=0",
    )
    line = error_line(result, "plm-fit")
    assert "folder test split has 1 items" in line
    assert not run_dir.exists()


def test_diverging_run_stops_naming_the_step(tmp_path):
    result = run(
        "fit",
        "--config",
        "digits.yaml",
        f"run.dir={tmp_path / 'run'}",
        "optim.lr=1e8",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "eval.plots=false",
    )
    line = error_line(result, "plm-fit")
    assert "training diverged: NaN or inf" in line and "at step" in line and "lower optim.lr" in line


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=inf", "optim.lr"),
        ("method.plm.tau=nan", "method.plm.tau"),
        ("trainer.limit_train_batches=2.5", "trainer.limit_train_batches"),
    ],
)
def test_values_that_no_knob_means(tmp_path, override, key):
    result = run("fit", "--config", "digits.yaml", override, f"run.dir={tmp_path / 'run'}")
    line = error_line(result, "plm-fit")
    assert f"'{key}'" in line
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_config_that_is_not_utf8_text(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00data: {name: digits}")
    result = run("fit", "--config", bad)
    line = error_line(result, "plm-fit")
    assert str(bad) in line and "not a UTF-8 text file" in line
    assert len(result.stderr.strip().splitlines()) == 1


def test_symlink_loop_in_a_class_folder_is_named(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for cls in ("a", "b", "c", "d"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (40 * i, 10, 90)).save(root / cls / f"{i}.png")
    loop = root / "b" / "loop.png"
    loop.symlink_to(loop)
    result = run(
        "fit",
        "--config",
        "folder_resnet50.yaml",
        f"data.root={root}",
        "model.pretrained=false",
        f"run.dir={tmp_path / 'run'}",
    )
    line = error_line(result, "plm-fit")
    assert f"{loop} is a symlink loop" in line and "missing" not in line


def test_data_error_before_training_leaves_no_run_folder(tmp_path):
    run_dir = tmp_path / "new" / "run"
    line = error_line(
        run("fit", "--config", "digits.yaml", f"run.dir={run_dir}", "data.sampler.batch_size=2000"), "plm-fit"
    )
    assert "not enough for one batch of data.sampler.batch_size=2000" in line
    assert not (tmp_path / "new").exists()

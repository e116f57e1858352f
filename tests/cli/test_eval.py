"""plm-eval as a user runs it (a subprocess): saved embeddings (.npz), query/gallery mode, and --ckpt mode on a
checkpoint that plm-fit wrote, whose numbers must equal the training-time evaluation exactly."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runner import run_cli

from plm_lightning.retrieval import evaluate_embeddings

METRIC_KEYS = {"R@1", "R@2", "R@4", "R@8", "MAP@R", "R-precision", "NMI"}


def _env():
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    return env


def run_eval(*args, cwd=None):
    return run_cli("eval", *args, cwd=cwd, timeout=300, env=_env())


def call_main(capsys, *args):
    """plm-eval's main() in this process (torch is imported already): for variations of what a subprocess test
    covers, to keep the file fast."""
    from plm_lightning.cli.eval import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_fit(*args, cwd=None):
    return run_cli("fit", *args, cwd=cwd, timeout=300, env=_env())


def one_error_line(result):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("plm-eval: error: ")
    assert result.stdout == ""
    return lines[0]


def make_data(seed=0, n_classes=12, per_class=6, dim=8):
    """Random embeddings with an exact duplicate of row 0 in another class and a few integer-valued rows (ties)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_classes * per_class, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    emb[per_class] = emb[0]  # the first item of class 1 duplicates the first of class 0
    emb[-4:] = rng.integers(-1, 2, size=(4, dim)).astype(np.float32) + 0.5
    return emb, labels


def reference(emb, labels, ks=(1, 2, 4, 8), **options):
    return evaluate_embeddings(torch.from_numpy(emb), torch.from_numpy(labels), list(ks), **options)


# --- the same-set protocol on saved embeddings ------------------------------------------------------------------------


def test_npz_equals_evaluate_embeddings_and_writes_output(tmp_path):
    emb, labels = make_data()
    np.savez(tmp_path / "emb.npz", embeddings=emb, labels=labels)
    out = tmp_path / "out" / "metrics.json"
    result = run_eval(tmp_path / "emb.npz", "--output", out)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == reference(emb, labels)  # exactly: floats survive JSON unchanged
    assert set(printed) == METRIC_KEYS
    assert json.loads(out.read_text()) == printed
    assert not [p for p in out.parent.iterdir() if p.name != "metrics.json"]  # atomic: no temporary left behind
    assert "note" not in result.stderr  # no singleton classes here


def test_npz_options(tmp_path, capsys):
    emb, labels = make_data(seed=5)
    names = np.array([f"class-{i:02d}" for i in labels])  # a plain unicode array, no pickle needed
    np.savez(tmp_path / "emb.npz", embeddings=emb.astype(np.float64), labels=names)
    rc, out, err = call_main(
        capsys, tmp_path / "emb.npz", "--no-normalize", "--backend", "torch", "--no-nmi", "--k", "5,1"
    )
    assert rc == 0, err
    expected = reference(emb, labels, (1, 5), normalize=False, backend="torch", compute_nmi=False)
    assert json.loads(out) == expected and list(expected) == ["R@1", "R@5", "MAP@R", "R-precision"]


def test_singleton_classes_are_evaluated_with_a_note(tmp_path):
    emb, labels = make_data(seed=2)
    labels = labels.copy()
    labels[[0, 7, 20]] = [100, 101, 102]  # three classes with a single image each
    np.savez(tmp_path / "emb.npz", embeddings=emb, labels=labels)
    result = run_eval(tmp_path / "emb.npz", "--no-nmi")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("plm-eval: note:")]
    assert len(notes) == 1, result.stderr
    assert f"3 of {len(labels)} queries" in notes[0]
    assert "misses for R@K" in notes[0] and "excluded from MAP@R and R-precision" in notes[0]
    metrics = json.loads(result.stdout)
    assert metrics == reference(emb, labels, compute_nmi=False)
    # the convention, visibly: the three lone queries can never hit
    assert metrics["R@8"] <= 100.0 * (len(labels) - 3) / len(labels) + 1e-9


def test_all_singletons_give_null_map_r(tmp_path, capsys):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "emb.npz", embeddings=rng.normal(size=(10, 4)), labels=np.arange(10))
    rc, out, err = call_main(capsys, tmp_path / "emb.npz", "--no-nmi", "--k", "1")
    assert rc == 0, err
    assert json.loads(out) == {"R@1": 0.0, "MAP@R": None, "R-precision": None}  # NaN -> JSON null
    assert "10 of 10 queries" in err


# --- errors: one line, exit code 2, naming the file and the array ---------------------------------------------------


def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


E, L = make_data()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", ["missing.npz", "file not found"]),
        ("empty", ["empty.npz", "empty"]),
        ("no_rows", ["no_rows.npz", "'embeddings'", "no rows"]),
        ("no_embeddings", ["no_embeddings.npz", "'embeddings'", "'labels'"]),
        ("no_labels", ["no_labels.npz", "no array 'labels'"]),
        ("length", ["length.npz", "72 rows", "'labels' has 71"]),
        ("not_2d", ["not_2d.npz", "'embeddings' must be 2-D", "(72, 2, 4)"]),
        ("nan", ["nan.npz", "3 of 72 rows with NaN or inf", "row 5"]),
        ("object_labels", ["object_labels.npz", "'labels'", "pickle"]),
        ("pickle_file", ["pickle_file.npz", "pickle"]),
        ("npy_file", ["npy_file.npy", ".npz archive"]),
        ("bad_k", ["--k", "'1,two'"]),
        ("zero_k", ["--k", "'0,1'"]),
        ("k_too_big", ["--k", "K=100", "71 other items"]),
        ("qg_without_masks", ["qg_without_masks.npz", "'is_query'", "--query-gallery"]),
        ("qg_non_bool_mask", ["qg_non_bool_mask.npz", "'is_gallery'", "boolean"]),
        ("qg_overlap", ["qg_overlap.npz", "overlap in 2 rows"]),
        ("two_files", ["one EMBEDDINGS.npz at a time"]),
        ("ckpt_missing", ["--ckpt", "nope.ckpt", "not found"]),
        ("ckpt_without_config", ["--ckpt needs --config"]),
    ],
)
def test_input_errors(tmp_path, case, expected):
    args = []
    if case == "missing":
        args = [tmp_path / "missing.npz"]
    elif case == "empty":
        (tmp_path / "empty.npz").write_bytes(b"")
        args = [tmp_path / "empty.npz"]
    elif case == "no_rows":
        args = [_write(tmp_path, "no_rows.npz", embeddings=np.zeros((0, 8), np.float32), labels=np.zeros(0, int))]
    elif case == "no_embeddings":
        args = [_write(tmp_path, "no_embeddings.npz", features=E, labels=L)]
    elif case == "no_labels":
        args = [_write(tmp_path, "no_labels.npz", embeddings=E)]
    elif case == "length":
        args = [_write(tmp_path, "length.npz", embeddings=E, labels=L[:-1])]
    elif case == "not_2d":
        args = [_write(tmp_path, "not_2d.npz", embeddings=E.reshape(72, 2, 4), labels=L)]
    elif case == "nan":
        bad = E.copy()
        bad[5, 0], bad[9, 3], bad[40] = np.nan, np.inf, -np.inf
        args = [_write(tmp_path, "nan.npz", embeddings=bad, labels=L)]
    elif case == "object_labels":
        args = [_write(tmp_path, "object_labels.npz", embeddings=E, labels=np.array(list(L), dtype=object))]
    elif case == "pickle_file":
        (tmp_path / "pickle_file.npz").write_bytes(pickle.dumps({"embeddings": E, "labels": L}))
        args = [tmp_path / "pickle_file.npz"]
    elif case == "npy_file":
        np.save(tmp_path / "npy_file.npy", E)
        args = [tmp_path / "npy_file.npy"]
    elif case == "bad_k":
        args = [_write(tmp_path, "a.npz", embeddings=E, labels=L), "--k", "1,two"]
    elif case == "zero_k":
        args = [_write(tmp_path, "a.npz", embeddings=E, labels=L), "--k", "0,1"]
    elif case == "k_too_big":
        args = [_write(tmp_path, "a.npz", embeddings=E, labels=L), "--k", "1,100"]
    elif case == "qg_without_masks":
        args = [_write(tmp_path, "qg_without_masks.npz", embeddings=E, labels=L), "--query-gallery"]
    elif case == "qg_non_bool_mask":
        q = np.arange(72) % 2 == 0
        args = [
            _write(
                tmp_path, "qg_non_bool_mask.npz", embeddings=E, labels=L, is_query=q, is_gallery=(~q).astype(np.int64)
            ),
            "--query-gallery",
        ]
    elif case == "qg_overlap":
        q = np.arange(72) % 2 == 0
        g = ~q
        g[[0, 2]] = True
        args = [_write(tmp_path, "qg_overlap.npz", embeddings=E, labels=L, is_query=q, is_gallery=g), "--query-gallery"]
    elif case == "two_files":
        a = _write(tmp_path, "a.npz", embeddings=E, labels=L)
        args = [a, a]
    elif case == "ckpt_missing":
        args = ["--ckpt", tmp_path / "nope.ckpt", "--config", "digits.yaml"]
    elif case == "ckpt_without_config":
        args = ["--ckpt", tmp_path / "nope.ckpt"]
    out = tmp_path / "metrics.json"
    line = one_error_line(run_eval(*args, "--output", out, cwd=tmp_path))
    for text in expected:
        assert text in line, line
    assert not out.exists()


# --- query / gallery ------------------------------------------------------------------------------------------------


def brute_force_query_gallery(q, ql, g, gl, ks):
    """Hit rate and MAP@R by a full float64 sort by (distance, gallery index) on L2-normalised vectors."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(len(g)), d.shape), d), axis=1)
    rel = gl[order] == ql[:, None]
    out = {f"R@{k}": 100.0 * rel[:, :k].any(1).mean() for k in ks}
    r = (gl[None, :] == ql[:, None]).sum(1)
    aps = [sum(rel[i, : j + 1].sum() / (j + 1) for j in range(r[i]) if rel[i, j]) / r[i] for i in range(len(q)) if r[i]]
    out["MAP@R"] = 100.0 * float(np.mean(aps))
    return out


def test_query_gallery_mode(tmp_path, capsys):
    from plm_lightning.retrieval import evaluate_query_gallery

    rng = np.random.default_rng(4)
    n_classes, per_class = 15, 6
    emb = rng.normal(size=(n_classes * per_class, 8)).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    is_query = np.tile(np.arange(per_class) < 2, n_classes)  # In-Shop style: 2 queries per item, the rest gallery
    is_gallery = ~is_query
    is_gallery[labels == 14] = False  # class 14 has queries but nothing in the gallery
    np.savez(tmp_path / "qg.npz", embeddings=emb, labels=labels, is_query=is_query, is_gallery=is_gallery)
    result = run_eval(tmp_path / "qg.npz", "--query-gallery", "--k", "1,2,4,8", "--no-nmi")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)

    expected = evaluate_query_gallery(
        torch.from_numpy(emb[is_query]),
        torch.from_numpy(labels[is_query]),
        torch.from_numpy(emb[is_gallery]),
        torch.from_numpy(labels[is_gallery]),
        [1, 2, 4, 8],
        compute_nmi=False,
    )
    assert metrics == expected
    brute = brute_force_query_gallery(
        emb[is_query], labels[is_query], emb[is_gallery], labels[is_gallery], [1, 2, 4, 8]
    )
    for key, value in brute.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert "2 of 30 queries have no item of their class in the gallery" in result.stderr

    # without --query-gallery the masks are ignored and every row queries all others
    rc, out, err = call_main(capsys, tmp_path / "qg.npz", "--no-nmi")
    assert rc == 0, err
    assert json.loads(out) == reference(emb, labels, compute_nmi=False)


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("plm-eval")
    assert script.is_file(), "pip install -e . registers plm-eval"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=_env(), timeout=60)
    assert result.returncode == 0 and "--query-gallery" in result.stdout and "--ckpt" in result.stdout


# --- a checkpoint written by plm-fit ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval_fit") / "run"
    result = run_fit(
        "--config",
        "digits.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "eval.before_training=false",
        cwd=run_dir.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_ckpt_mode_reproduces_the_training_time_evaluation(digits_run, tmp_path):
    final = json.loads((digits_run / "metrics.json").read_text())["final"]
    out = tmp_path / "ckpt_metrics.json"
    result = run_eval(
        "--ckpt", digits_run / "checkpoints" / "last.ckpt", "--config", "digits.yaml", "--output", out, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert set(metrics) == METRIC_KEYS  # K from the config's eval.ks
    assert metrics["R@1"] == final["R@1"]  # exactly: same student, loader, precision and search
    assert metrics == final
    assert json.loads(out.read_text()) == metrics


@pytest.mark.slow
def test_ckpt_mode_options_and_a_config_that_does_not_fit(digits_run, tmp_path, capsys):
    ckpt = digits_run / "checkpoints" / "last.ckpt"
    rc, out, err = call_main(
        capsys,
        "--ckpt",
        ckpt,
        "--config",
        digits_run / "config.yaml",
        "--split",
        "train",
        "--k",
        "1,3",
        "--no-nmi",
        "--backend",
        "torch",
    )
    assert rc == 0, err
    assert set(json.loads(out)) == {"R@1", "R@3", "MAP@R", "R-precision"}

    # overrides are config overrides; a model that differs from the checkpoint's is refused in one line
    rc, out, err = call_main(capsys, "--ckpt", ckpt, "--config", "digits.yaml", "--model.embedding_dim", "32")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "last.ckpt" in err and "student.head.linear.weight" in err and "config.yaml" in err

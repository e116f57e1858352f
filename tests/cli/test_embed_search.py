"""plm-embed and plm-search on a model that plm-fit trained on digits: a dataset split (the done-when check: searching
the exported index reproduces the run's Recall@1), a folder of arbitrary images with broken files, and the index
library underneath."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from runner import run_cli

from plm_lightning.retrieval.index import ExportedIndex, build_index, search_index, write_export


def _env():
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    return env


def run(module, *args):
    return run_cli(module, *args, timeout=300, env=_env())


def call_main(capsys, main, *args):
    """A CLI's main() in this process (argparse's usage errors exit with SystemExit: its code)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short digits run (the bundled config, fewer epochs and batches)."""
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    result = run(
        "fit",
        "--config",
        "digits.yaml",
        f"run.dir={run_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "eval.plots=false",
        "eval.before_training=false",
        "trainer.enable_progress_bar=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# --- the done-when check --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_searching_the_exported_test_split_reproduces_recall_at_1(trained, tmp_path, capsys):
    out = tmp_path / "export"
    result = run(
        "embed",
        "--ckpt",
        trained / "checkpoints" / "last.ckpt",
        "--config",
        "digits.yaml",
        "--split",
        "test",
        "--output",
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    index = ExportedIndex.load(out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric"] == "inner_product" and meta["normalized"] and meta["backbone"] == "small_cnn"
    assert meta["embedding_dim"] == 64 and meta["count"] == len(index) and "Resize" in meta["transform"]
    assert index.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)
    assert index.paths[:2] == ["digits:test:0", "digits:test:1"] and set(np.unique(index.labels)) == {5, 6, 7, 8, 9}

    # Every test image queries the others (itself excluded by index), all at once through the library.
    n = len(index)
    _, ids = index.search(index.embeddings, 1, exclude=np.arange(n))
    top1 = 100 * float((index.labels[ids[:, 0]] == index.labels).mean())
    r1 = json.loads((trained / "metrics.json").read_text())["final"]["R@1"]
    print(f"top-1 same class {top1:.2f}%  vs  R@1 {r1:.2f}%")
    assert abs(top1 - r1) <= 1.0

    # A couple of queries through plm-search (a subprocess, and its main() in this process), agreeing with the library.
    from plm_lightning.cli.search import main as search

    for item, subprocess_ in ((0, True), (n - 1, False)):
        args = ("--index", out, "--index-item", item, "-k", 3, "--json")
        if subprocess_:
            result = run("search", *args)
            rc, stdout, stderr = result.returncode, result.stdout, result.stderr
        else:
            rc, stdout, stderr = call_main(capsys, search, *args)
        assert rc == 0, stderr
        doc = json.loads(stdout)
        assert doc["query"] == {"path": f"digits:test:{item}", "label": int(index.labels[item]), "index_item": item}
        assert [r["rank"] for r in doc["results"]] == [1, 2, 3]
        assert doc["results"][0]["index"] == int(ids[item, 0]) and item not in [r["index"] for r in doc["results"]]
        assert doc["results"][0]["path"] == f"digits:test:{ids[item, 0]}"


# --- a folder of arbitrary images ------------------------------------------------------------------------------------
def make_folder(root):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        for i in range(3):
            folder = root / cls / ("nested/deeper" if i == 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{cls}{i}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(root / "loose.png")  # no class
    data = (root / "cats" / "cats0.jpg").read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "cats" / "._cats0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "notes.txt").write_text("not an image")


@pytest.mark.slow
def test_folder_of_arbitrary_images_with_broken_files(trained, tmp_path, capsys):
    from plm_lightning.cli.search import main as search

    images, out = tmp_path / "images", tmp_path / "export"
    make_folder(images)
    result = run("embed", "--ckpt", trained / "checkpoints" / "last.ckpt", "--images", images, "--output", out)
    assert result.returncode == 0, result.stderr
    assert "skipped 2 unreadable files" in result.stderr
    assert "truncated.jpg" in result.stderr and "empty.png" in result.stderr
    assert "ignored 1 macOS metadata file" in result.stderr
    index = ExportedIndex.load(out)
    names = [p.rsplit("/", 1)[-1] for p in index.paths]
    assert names == ["cats0.jpg", "cats1.png", "cats2.jpg", "dogs0.jpg", "dogs1.png", "dogs2.jpg", "loose.png"]
    assert index.labels.tolist() == [0, 0, 0, 1, 1, 1, -1]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["classes"] == ["cats", "dogs"] and meta["source"]["unreadable"] == 2

    query = images / "dogs" / "nested" / "deeper" / "dogs2.jpg"
    grid = tmp_path / "grid.png"
    rc, stdout, stderr = call_main(capsys, search, "--index", out, "--image", query, "-k", 4, "--grid", grid)
    assert rc == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("query: ") and "(label 1)" in lines[0]
    first = lines[2].split()
    assert first[0] == "1" and float(first[1]) == pytest.approx(1.0, abs=1e-4) and first[-1] == str(query)
    assert len(lines) == 2 + 4 + 1  # query, header, 4 results, grid
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line_and_exit_2(trained, tmp_path, capsys):
    from plm_lightning.cli.embed import main as embed
    from plm_lightning.cli.search import main as search

    ckpt = trained / "checkpoints" / "last.ckpt"
    cases = [
        (embed, ["--ckpt", ckpt, "--output", tmp_path / "o"], "either --images DIR or --config X"),
        (embed, ["--ckpt", tmp_path / "none.ckpt", "--images", tmp_path, "--output", tmp_path / "o"], "not found"),
        (embed, ["--ckpt", ckpt, "--images", tmp_path / "nope", "--output", tmp_path / "o"], "not a folder"),
        (embed, ["--ckpt", ckpt, "--images", tmp_path, "--output", tmp_path / "o"], "no readable image files"),
        (embed, ["--ckpt", ckpt, "--config", "digits.yaml", "optim.lrr=1", "--output", tmp_path / "o"], "optim.lrr"),
        (embed, ["--output", tmp_path / "o"], "--ckpt"),
        (search, ["--index", tmp_path, "--index-item", 0], "not an export folder"),
        (search, ["--index", tmp_path], "either --image QUERY or --index-item N"),
        (search, ["--index", tmp_path, "--index-item", "x"], "invalid int value"),
    ]
    (tmp_path / "notes.txt").write_text("no images here")
    for main, args, expected in cases:
        rc, out, err = call_main(capsys, main, *args)
        lines = err.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1 and expected in lines[0], (args, err)
        assert lines[0].startswith(("plm-embed: error: ", "plm-search: error: "))


# --- the index library -----------------------------------------------------------------------------------------------
def test_search_excludes_by_id_orders_ties_by_id_and_pads():
    emb = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    index = build_index(emb, "inner_product")
    scores, ids = search_index(index, emb[:2], 3, metric="inner_product", exclude=[0, 1])
    assert ids.tolist() == [[1, 3, 2], [0, 3, 2]]  # the exact duplicate first; the query itself never
    assert scores[0].tolist() == pytest.approx([1.0, 0.6, 0.0])
    scores, ids = search_index(index, emb[:1], 5, metric="inner_product", exclude=[0])
    assert ids[0].tolist() == [1, 3, 2, -1, -1] and np.isnan(scores[0, -2:]).all()  # only 3 others: padded
    l2 = build_index(emb, "l2")
    scores, ids = search_index(l2, np.array([[0, 0]], np.float32), 2, metric="l2")
    assert ids.tolist() == [[0, 1]] and scores[0].tolist() == pytest.approx([1.0, 1.0])  # Euclidean, not squared


def test_export_round_trip_and_inconsistent_folders(tmp_path):
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    write_export(tmp_path / "e", emb, np.arange(6) % 2, [f"x:{i}" for i in range(6)], {"metric": "l2", "a": 1})
    back = ExportedIndex.load(tmp_path / "e")
    assert np.array_equal(back.embeddings, emb) and back.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert back.paths[5] == "x:5" and back.meta["a"] == 1 and back.meta["count"] == 6 and back.metric == "l2"
    assert not [p for p in (tmp_path / "e").iterdir() if p.name.startswith(".")]
    (tmp_path / "e" / "paths.txt").write_text("only\n")
    with pytest.raises(ValueError, match="inconsistent export"):
        ExportedIndex.load(tmp_path / "e")
    with pytest.raises(ValueError, match="line break"):
        write_export(tmp_path / "f", emb[:1], [0], ["a\nb"], {"metric": "l2"})


def test_grid_images_of_an_export_written_before_the_data_keys_moved():
    """meta.json describes its dataset with the config's data section as written then: the old layout still loads."""
    from plm_lightning.cli.search import ItemImages

    old = {"name": "digits", "image_size": 16, "batch_size": 60, "num_workers": 0, "eval_batch_size": 512}
    image = ItemImages({"source": {"data": old}})("digits:test:3")
    new = {"name": "digits", "image_size": 16, "sampler": {"batch_size": 60}}
    assert np.array_equal(image, ItemImages({"source": {"data": new}})("digits:test:3")) and image.size > 0

"""The notebooks run top to bottom (nbclient) on CPU, offline, writing into a temporary folder.

The kernel is this interpreter (a kernelspec written into the test's own JUPYTER_PATH), so the notebooks see the
package and its dependencies exactly as the tests do, whatever `python` is first on PATH.
"""
import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "plm-notebook-test"


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "plm tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PLM_NOTEBOOK_OUT", str(tmp_path / "out"))
    # Smaller than a reader's run, same code path: one training epoch, a few nearest-neighbour batches.
    monkeypatch.setenv("PLM_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("PLM_NOTEBOOK_OVERRIDES", "trainer.limit_train_batches=4 eval.nmi=false")
    monkeypatch.setenv("PLM_NOTEBOOK_MAX_BATCHES", "3")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("PLM_RUN_DIR", raising=False)
    return tmp_path


def test_notebooks_are_committed_clean():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert all(c.get("id") for c in nb.cells)


@pytest.mark.slow
@pytest.mark.parametrize("name, check", [
    ("quickstart", ["quickstart/run/plots/recall.png", "quickstart/export/index.faiss", "quickstart/search.png"]),
    ("similarity_analysis", ["similarity_analysis/curvature.png", "similarity_analysis/simreport_curvature4.png"]),
])
def test_notebook_runs_top_to_bottom(kernel_env, name, check):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                                     resources={"metadata": {"path": str(kernel_env)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    for rel in check:
        path = kernel_env / "out" / rel
        assert path.is_file() and path.stat().st_size > 0, rel
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook displayed no figures"

"""Execute the notebooks in place, as a reader runs them, so that their committed outputs (figures, tables) are what
the code produces:

    python notebooks/execute.py                 # every notebook
    python notebooks/execute.py quickstart.ipynb

Each notebook runs top to bottom in a kernel of this interpreter (CPU, offline, W&B disabled), writing its run
folders below runs/notebooks/. The hash of its code cells is recorded in the notebook's metadata
(``plm.code_sha256``); tests/notebooks/test_notebooks.py fails when a committed notebook's code no longer matches the
outputs it carries, i.e. when someone changed a code cell without executing the notebook again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
KERNEL = "plm-notebooks"


def code_sha256(nb) -> str:
    """The hash of the notebook's code cells, in order: what its outputs were produced from."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode("utf-8") + b"\0")
    return digest.hexdigest()


def write_kernelspec(jupyter_path: Path, name: str = KERNEL) -> None:
    """A kernelspec for this interpreter, so the notebook sees the package exactly as this process does."""
    spec = jupyter_path / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "plm-lightning",
                "language": "python",
            }
        )
    )


def execute(path: Path, workdir: Path) -> float:
    """Run ``path`` top to bottom with ``workdir`` as its working directory and write it back with its outputs."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=900, resources={"metadata": {"path": str(workdir)}}
    )
    start = time.perf_counter()
    client.execute()
    nb.metadata["plm"] = {"code_sha256": code_sha256(nb), "executed_with": "python notebooks/execute.py"}
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    names = argv or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as jupyter:
        write_kernelspec(Path(jupyter))
        os.environ["JUPYTER_PATH"] = jupyter
        os.environ["WANDB_MODE"] = "disabled"
        os.environ.pop("WANDB_API_KEY", None)
        for name in ("PLM_NOTEBOOK_OUT", "PLM_NOTEBOOK_EPOCHS", "PLM_NOTEBOOK_OVERRIDES", "PLM_NOTEBOOK_MAX_BATCHES"):
            os.environ.pop(name, None)  # the reader's settings, not the tests' shortened ones
        for name in names:
            seconds = execute(NOTEBOOKS / name, NOTEBOOKS.parent)
            print(f"{name}: executed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

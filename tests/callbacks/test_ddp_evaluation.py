"""Distributed evaluation equals single-process evaluation, on a test split whose size is odd.

Two CPU processes (gloo) shard the 303-item test split 152 / 151, so the gather pads one rank and must drop the padding
by dataset index (docs/protocols.md, "Multi-GPU"). The evaluation before training sees the identical initial
network in both runs, so every metric must be bit-for-bit the same. Lightning's DDP launcher re-executes sys.argv,
hence a subprocess running the real entry point module.
"""

import json
import os
import time

import pytest
from runner import run_cli

ODD_SPLIT = ["data.synthetic.num_classes=6", "data.synthetic.points_per_class=101"]  # test: 3 classes x 101 = 303
TEST_SIZE = 303


def run_fit(run_dir, *args):
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    env.pop("PLM_RUN_DIR", None)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    result = run_cli(
        "fit",
        "--config",
        "synthetic.yaml",
        *ODD_SPLIT,
        "run.seed=3",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"run.dir={run_dir}",
        *args,
        env=env,
        cwd=run_dir.parent,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result, elapsed


@pytest.mark.slow
def test_ddp_initial_evaluation_equals_single_process(tmp_path):
    single_dir, ddp_dir = tmp_path / "single" / "run", tmp_path / "ddp" / "run"
    single, t_single = run_fit(single_dir, "trainer.devices=1")
    ddp, t_ddp = run_fit(ddp_dir, "trainer.devices=2", "trainer.accelerator=cpu")
    print(f"single process: {t_single:.1f} s, DDP (2 processes): {t_ddp:.1f} s")

    # The DDP run really ran two processes.
    log = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "Starting with 2 processes" in log, log[-3000:]
    assert "MEMBER: 2/2" not in single.stdout + single.stderr

    # Rank 0 alone wrote the results: one metrics.json (and one config.yaml) anywhere below the DDP run's folder.
    assert [p.relative_to(tmp_path) for p in (tmp_path / "ddp").rglob("metrics.json")] == [
        (ddp_dir / "metrics.json").relative_to(tmp_path)
    ]
    assert len(list((tmp_path / "ddp").rglob("config.yaml"))) == 1
    assert not [p for p in (tmp_path / "ddp").rglob("*") if p.name.endswith(".tmp")]

    single_metrics = json.loads((single_dir / "metrics.json").read_text())
    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    initial_single, initial_ddp = single_metrics["initial"], ddp_metrics["initial"]
    assert initial_single is not None and initial_ddp is not None
    assert set(initial_ddp) == set(initial_single) == {"R@1", "R@2", "R@4", "R@8", "MAP@R", "R-precision", "NMI"}
    for key in initial_single:
        assert initial_ddp[key] == initial_single[key], (key, initial_ddp[key], initial_single[key])

    # Every R@K is a count of hits over exactly 303 queries: a padded duplicate (304 queries, one of them finding its
    # own copy at distance 0) would not give whole counts.
    for k in (1, 2, 4, 8):
        hits = initial_ddp[f"R@{k}"] * TEST_SIZE / 100
        assert abs(hits - round(hits)) < 1e-9, (k, hits)
    # Training ran and was evaluated in both runs (the numbers differ: two ranks see different batches).
    assert ddp_metrics["final"] is not None and [h["epoch"] for h in ddp_metrics["history"]] == [0]


def test_embedding_pass_casts_inputs_to_true_precision_weights():
    """precision "64-true" / "bf16-true" converts the weights; the evaluation's embedding pass runs outside Lightning's
    loops (which would convert the batch), so it casts the inputs itself and returns float32 embeddings."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from plm_lightning.models.embedding_pass import embed_loader

    torch.manual_seed(0)
    x = torch.randn(10, 5)
    data = TensorDataset(x, torch.arange(10) % 3, torch.arange(10))
    model = torch.nn.Linear(5, 4).double()
    idx, emb, lab = embed_loader(model, DataLoader(data, batch_size=4), torch.device("cpu"))
    assert emb.dtype == torch.float32 and idx.tolist() == list(range(10))
    assert torch.equal(emb, model(x.double()).detach().float())


@pytest.mark.slow
def test_stml_trains_under_ddp(tmp_path):
    """STML on two processes: the nearest-neighbour table from the student's auxiliary embeddings gathered from both
    ranks, both heads in DDP's gradient reduction, evaluation as for PLM."""
    run_dir = tmp_path / "ddp" / "run"
    ddp, _ = run_fit(run_dir, "method.name=stml", "trainer.devices=2", "trainer.accelerator=cpu")
    log = ddp.stdout + ddp.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log, log[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final"] is not None and [h["epoch"] for h in metrics["history"]] == [0]

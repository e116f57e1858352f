"""The supervised reference (method.name=supervised): labels reach its loss (unlike PLM's), its classifier rows
follow the training classes, it trains through plm-fit with random batches, and plm-eval reads its checkpoint."""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf
from runner import run_cli

from plm_lightning.config import load_config
from plm_lightning.data.sampler import RandomBatchSampler
from plm_lightning.models.supervised_module import SupervisedModule


def make(class_ids=(0, 1, 2, 3, 4), **overrides):
    cfg = load_config("digits.yaml", ["method.name=supervised", *[f"{k}={v}" for k, v in overrides.items()]])
    return SupervisedModule(OmegaConf.to_container(cfg, resolve=True), in_channels=1, class_ids=list(class_ids))


def test_labels_drive_the_loss_and_map_to_classifier_rows():
    torch.manual_seed(0)
    module = make(class_ids=(7, 3, 11))
    assert module.class_index(torch.tensor([3, 7, 11, 3])).tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="not among the class_ids"):
        module.class_index(torch.tensor([4]))
    images = torch.randn(6, 1, 16, 16)
    labels = torch.tensor([3, 7, 11, 3, 7, 11])
    a = module.training_step((images, labels, torch.arange(6)), 0)["loss"]
    b = module.training_step((images, labels.flip(0), torch.arange(6)), 0)["loss"]
    assert not torch.equal(a, b)
    # Cross-entropy of normalised-softmax logits: ln(3) when every logit is equal.
    with torch.no_grad():
        module.classifier.zero_()
        module.classifier[:, 0] = 1.0
    assert torch.allclose(
        module.training_step((images, labels, torch.arange(6)), 0)["loss"], torch.tensor(3.0).log(), atol=1e-5
    )


def test_random_batches_are_a_function_of_seed_and_epoch_and_disjoint_across_ranks():
    one = RandomBatchSampler(50, 8, seed=3)
    assert len(one) == 6 and all(len(b) == 8 for b in one)
    assert list(one) == list(RandomBatchSampler(50, 8, seed=3))
    one.set_epoch(1)
    assert list(one) != list(RandomBatchSampler(50, 8, seed=3))
    seen = [i for b in one for i in b]
    assert len(seen) == len(set(seen)) == 48
    ranks = [RandomBatchSampler(50, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert list(ranks[0]) == list(one)[0::2] and list(ranks[1]) == list(one)[1::2]


@pytest.mark.slow
def test_supervised_fit_and_eval_on_digits(tmp_path):
    run_dir = tmp_path / "sup"
    result = run_cli(
        "fit",
        "--config",
        "digits.yaml",
        "method.name=supervised",
        "data.sampler.batch_size=64",
        "trainer.max_epochs=2",
        f"run.dir={run_dir}",
        "eval.plots=true",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    # The classifier learns the training classes (digits 0-4) from their labels.
    with open(run_dir / "logs" / "metrics.csv") as f:
        accuracy = [float(r["train/accuracy_epoch"]) for r in csv.DictReader(f) if r.get("train/accuracy_epoch")]
    assert len(accuracy) == 2 and accuracy[-1] > 0.9
    assert (run_dir / "plots" / "recall.png").is_file()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    result = run_cli("eval", "--ckpt", str(ckpt), "--config", str(run_dir / "config.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["R@1"] == pytest.approx(metrics["final"]["R@1"], abs=1e-6)

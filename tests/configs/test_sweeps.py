"""W&B sweep files: every parameter is a config key, and plm-fit accepts the agent's exact argument format."""

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from runner import run_cli

from plm_lightning.config import load_config

SWEEPS = sorted((Path(str(resources.files("plm_lightning") / "configs" / "sweeps"))).glob("*.yaml"))


def agent_args(params: dict) -> list[str]:
    """What `wandb agent` substitutes for ${args}: --name=value with Python str() of each value."""
    return [f"--{name}={value}" for name, value in params.items()]


def sample_values(spec: dict) -> list:
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def config_argument(sweep: dict) -> str:
    command = sweep["command"]
    return command[command.index("--config") + 1]


def test_there_are_sweeps():
    assert SWEEPS, "no sweep files shipped"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_format_and_every_value_is_a_valid_config(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"] == {"name": "val/R@1_best", "goal": "maximize"}
    assert "${args}" in sweep["command"] and "${interpreter}" in sweep["command"]
    base = config_argument(sweep)
    for name, spec in sweep["parameters"].items():
        for value in sample_values(spec):
            load_config(base, agent_args({name: value}))  # raises ConfigError for an unknown key or bad value


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_agent_formatted_arguments_reach_the_config(path, tmp_path):
    sweep = yaml.safe_load(path.read_text())
    combo = {name: sample_values(spec)[-1] for name, spec in sweep["parameters"].items()}
    result = run_cli(
        "fit",
        *sweep["command"][sweep["command"].index("--config") : -1],
        *agent_args(combo),
        "--print-config",
        timeout=120,
        env_extra={"WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    for name, value in combo.items():
        node = printed
        for part in name.split("."):
            node = node[part]
        assert node == (None if value == "None" else value), name


@pytest.mark.slow
def test_a_sweep_run_trains_with_agent_arguments(tmp_path):
    sweep = yaml.safe_load(SWEEPS[0].read_text())
    combo = {name: sample_values(spec)[0] for name, spec in sweep["parameters"].items()}
    run_dir = tmp_path / "run"
    result = run_cli(
        "fit",
        *sweep["command"][sweep["command"].index("--config") : -1],
        *agent_args(combo),
        f"--run.dir={run_dir}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        timeout=300,
        env_extra={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"]["R@1"] >= 0
    assert list((run_dir / "wandb").glob("offline-run-*"))

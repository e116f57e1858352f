"""The typed config: bundled configs, the three override formats, and one-line errors for bad input."""

import pytest
import yaml

from plm_lightning.config import ConfigError, load_config, parse_overrides
from plm_lightning.config.loading import bundled_configs


def test_every_bundled_config_loads():
    assert "digits.yaml" in bundled_configs()
    for name in bundled_configs():
        if name == "digits.yaml":
            cfg = load_config(name)
            assert cfg.data.name == "digits"


@pytest.mark.parametrize(
    "args",
    [
        ["optim.lr=0.5", "method.plm.tau=0.25"],
        ["--optim.lr=0.5", "--method.plm.tau=0.25"],
        ["--optim.lr", "0.5", "--method.plm.tau", "0.25"],
        ["--optim.lr", "0.5", "method.plm.tau=0.25"],
    ],
)
def test_override_formats_are_equivalent(args):
    cfg = load_config("digits.yaml", args)
    assert cfg.optim.lr == 0.5 and cfg.method.plm.tau == 0.25


def test_wandb_agent_values():
    # The W&B agent writes Python str() values: None, True, 1e-05, [1, 2].
    cfg = load_config(
        "digits",
        [
            "--method.plm.max_candidates=None",
            "--data.augmentation.enabled=False",
            "--optim.lr=1e-05",
            "--eval.ks=[1, 2]",
        ],
    )
    assert cfg.method.plm.max_candidates is None
    assert cfg.data.augmentation.enabled is False
    assert cfg.optim.lr == pytest.approx(1e-5)
    assert list(cfg.eval.ks) == [1, 2]


def test_yaml_file_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {"data": {"name": "digits"}, "model": {"backbone": "small_cnn", "pretrained": False}, "optim": {"lr": 0.01}}
        )
    )
    assert load_config(str(path)).optim.lr == 0.01


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["optim.lrr=0.1"], "'optim.lrr'"),
        (["optim.lr=abc"], "'optim.lr'"),
        (["optim.lr=-1"], "'optim.lr'"),
        (["data.sampler.batch_size=61"], "divisible by data.sampler.neighbours_per_seed"),
        (["data.name=digitz"], "did you mean 'digits'"),
        (["data.name=folder", "data.root=/definitely/not/here"], "'data.root'"),
        (["trainer.precision=fp8"], "'trainer.precision'"),
        (["data.glyphs.task=sorce"], "did you mean 'source'"),  # a one_of field of a nested section
        (["method.proxies.pairs=neares"], "is not one of all, nearest"),
        (["method.teacher.momentum=1.0"], "'method.teacher.momentum'"),
        (["eval.ks=[4, 1]"], "'eval.ks'"),
        (["model.pretrained=true"], "'model.pretrained'"),
        (["--optim.lr"], "has no value"),
        (["lr"], "cannot parse override"),
    ],
)
def test_bad_values_give_one_line_errors(args, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("digits.yaml", args)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_suggests_the_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"):
        load_config("digits.yaml", ["optim.lrr=0.1"])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method:\n  n_alfa: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'method.n_alfa' \(in .*bad.yaml\).*method.plm.n_alpha"):
        load_config(str(path))


def test_missing_config_file_suggests_bundled():
    with pytest.raises(ConfigError, match="did you mean 'digits.yaml'"):
        load_config("digitz.yaml")


def test_parse_overrides_none_and_forms():
    assert parse_overrides(["a.b=None", "--c.d", "3", "--e=f"]) == ["a.b=null", "c.d=3", "e=f"]


def test_resume_and_stop_after_epochs(tmp_path):
    assert load_config("digits.yaml").resume is None
    assert load_config("digits.yaml", [f"run.dir={tmp_path}", "resume=auto"]).resume == "auto"
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    assert load_config("digits.yaml", [f"resume={ckpt}"]).resume == str(ckpt)
    assert load_config("digits.yaml", ["trainer.stop_after_epochs=2"]).trainer.stop_after_epochs == 2
    for args, fragment in [
        (["resume=auto"], "needs run.dir"),
        ([f"resume={tmp_path / 'missing.ckpt'}"], "does not exist"),
        (["trainer.stop_after_epochs=0"], "trainer.stop_after_epochs"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as info:
            load_config("digits.yaml", args)
        assert "\n" not in str(info.value)


def test_allowed_values_have_one_source():
    """Every one_of field of the schema is checked, with the values the field declares; the registry keys check
    against the registries themselves."""
    from omegaconf import OmegaConf

    from plm_lightning.config.schema import Config, declared_choices
    from plm_lightning.config.validation import CHOICES
    from plm_lightning.data.registry import DATASETS

    declared = declared_choices()
    assert {"optim.name", "data.glyphs.task", "trainer.precision", "logger.wandb_mode"} <= set(declared)
    assert all(CHOICES[key] == values for key, values in declared.items())
    assert CHOICES["data.name"] == tuple(DATASETS)
    defaults = OmegaConf.structured(Config)
    for key, values in CHOICES.items():
        assert OmegaConf.select(defaults, key) in values, key  # every default is allowed


# --- keys that moved ---------------------------------------------------------------------------------------------
def test_an_old_key_on_the_command_line_names_the_new_one():
    with pytest.raises(ConfigError, match=r"'method.num_proxies' is now 'method.proxies.count'"):
        load_config("digits.yaml", ["method.num_proxies=0"])
    with pytest.raises(ConfigError, match=r"'method.ema_momentum' is now 'method.teacher.momentum'"):
        load_config("digits.yaml", ["--method.ema_momentum", "0.9"])
    with pytest.raises(ConfigError, match=r"'data.batch_size' is now 'data.sampler.batch_size'"):
        load_config("digits.yaml", ["data.batch_size=30"])


def test_a_config_file_with_old_keys_is_read_under_the_new_names(tmp_path, capsys):
    old = tmp_path / "config.yaml"  # as a run made before the move wrote it
    old.write_text(
        "data:\n  name: digits\n  batch_size: 30\n  num_workers: 0\n"
        "method:\n  num_proxies: 7\n  tau: 0.3\n  ema_momentum: 0.99\n  proxy_pairs: nearest\n"
    )
    cfg = load_config(str(old))
    assert cfg.data.sampler.batch_size == 30 and cfg.data.loader.num_workers == 0
    assert cfg.method.proxies.count == 7 and cfg.method.plm.tau == 0.3
    assert cfg.method.teacher.momentum == 0.99 and cfg.method.proxies.pairs == "nearest"
    note = capsys.readouterr().err
    assert "method.num_proxies -> method.proxies.count" in note and note.count("\n") == 1


def test_upgrade_moves_every_old_key_and_keeps_a_new_value():
    from plm_lightning.config.migration import MOVED, upgrade

    old: dict = {"optim": {"lr": 0.1}}
    for i, key in enumerate(MOVED):
        section, leaf = key.split(".")
        old.setdefault(section, {})[leaf] = i
    new, moved = upgrade(old)
    assert [o for o, _ in moved] == list(MOVED) and new["optim"] == {"lr": 0.1}
    for i, target in enumerate(MOVED.values()):
        section, group, leaf = target.split(".")
        assert new[section][group][leaf] == i
    assert set(new["method"]) == {"plm", "gaussian", "knn", "kmeans", "proxies", "loss", "teacher"}
    assert set(new["data"]) == {"augmentation", "sampler", "loader"}
    assert "num_proxies" in old["method"] and "proxies" not in old["method"]  # the input is not modified
    both, _ = upgrade({"method": {"num_proxies": 1, "proxies": {"count": 2}}})
    assert both["method"] == {"proxies": {"count": 2}}  # written by this version: the new place wins


def test_the_configuration_doc_lists_every_moved_key():
    from pathlib import Path

    from plm_lightning.config.migration import MOVED

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    assert all(f"| `{old}` | `{new}` |" in doc for old, new in MOVED.items())


@pytest.mark.parametrize("name", bundled_configs())
def test_bundled_configs_use_the_current_keys(name):
    from plm_lightning.config.loading import resolve_config_path
    from plm_lightning.config.migration import upgrade

    data = yaml.safe_load(resolve_config_path(name).read_text())
    assert upgrade(data)[1] == [], f"{name} still uses keys that moved"

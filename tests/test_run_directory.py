"""run_directory: which config keys a resumed run may change (where and how it runs, never what it computes)."""

import pytest

from plm_lightning.run_directory import _may_change


@pytest.mark.parametrize(
    "key", ["paper.metrics.R@1", "paper.source", "logger.group", "run.dir", "data.loader.num_workers"]
)
def test_keys_that_do_not_change_the_computation_may_change_on_resume(key):
    assert _may_change(key)


@pytest.mark.parametrize(
    "key",
    ["method.loss.delta", "run.seed", "data.augmentation.crop_scale", "data.augmentation.hflip", "optim.lr", "papers"],
)
def test_keys_that_change_the_computation_may_not(key):
    assert not _may_change(key)


# Keys of the moved sub-sections that were added after the move.
ADDED_SINCE_THE_MOVE = ("data.sampler.index",)


def _old_layout(cfg):
    """cfg as a run's config.yaml / a checkpoint held it before the method's keys moved into sub-sections."""
    from omegaconf import OmegaConf

    from plm_lightning.config.migration import MOVED

    data = OmegaConf.to_container(cfg, resolve=True)
    for key in ADDED_SINCE_THE_MOVE:  # absent from a file of that time; reading it brings them back at defaults
        section, group, leaf = key.split(".")
        data[section][group].pop(leaf)
    for old, new in MOVED.items():
        section, group, leaf = new.split(".")
        data[section][old.split(".")[1]] = data[section][group].pop(leaf)
    for new in MOVED.values():
        section, group, _ = new.split(".")
        if group in data[section]:
            assert not data[section][group]
            del data[section][group]
    return data


def test_a_run_written_before_the_keys_moved_is_the_same_run(tmp_path):
    import yaml

    from plm_lightning.config import load_config
    from plm_lightning.run_directory import same_run_config

    cfg = load_config("digits.yaml", ["method.proxies.count=7"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(_old_layout(cfg)))
    assert "num_proxies: 7" in saved.read_text() and "batch_size: 60" in saved.read_text()
    assert same_run_config(saved, cfg)
    assert not same_run_config(saved, load_config("digits.yaml", ["method.proxies.count=8"]))


def test_views_written_as_a_number_equal_the_methods_default(tmp_path):
    """Runs written before data.augmentation.views could be null recorded views: 1; for PLM that is the default
    (null = the method's), so they are the same run; for STML (default 2) they are not."""
    import yaml
    from omegaconf import OmegaConf

    from plm_lightning.config import load_config
    from plm_lightning.run_directory import same_run_config

    for method, same in (("plm", True), ("stml", False)):
        cfg = load_config("digits.yaml", [f"method.name={method}"])
        data = OmegaConf.to_container(cfg, resolve=True)
        data["data"]["augmentation"]["views"] = 1
        saved = tmp_path / f"{method}.yaml"
        saved.write_text(yaml.safe_dump(data))
        assert same_run_config(saved, cfg) is same, method


def test_a_checkpoint_written_before_the_keys_moved_resumes(tmp_path):
    import torch

    from plm_lightning.config import load_config
    from plm_lightning.run_directory import RunDirError, check_resume

    cfg = load_config("digits.yaml", [f"run.dir={tmp_path}"])
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": _old_layout(cfg)}}, ckpt)
    check_resume(cfg, str(ckpt))  # no RunDirError: the same config, in the old layout
    other = load_config("digits.yaml", [f"run.dir={tmp_path}", "method.loss.delta=2.0"])
    with pytest.raises(RunDirError, match=r"method\.loss\.delta"):
        check_resume(other, str(ckpt))

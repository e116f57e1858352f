"""run_directory: which config keys a resumed run may change (where and how it runs, never what it computes)."""

import pytest

from plm_lightning.run_directory import _may_change


@pytest.mark.parametrize("key", ["paper.metrics.R@1", "paper.source", "logger.group", "run.dir", "data.num_workers"])
def test_keys_that_do_not_change_the_computation_may_change_on_resume(key):
    assert _may_change(key)


@pytest.mark.parametrize("key", ["method.delta", "run.seed", "data.crop_scale", "data.hflip", "optim.lr", "papers"])
def test_keys_that_change_the_computation_may_not(key):
    assert not _may_change(key)

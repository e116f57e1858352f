"""The LightningModule: labels never reach the loss; the teacher stays frozen and in eval mode; EMA moves it."""

import torch
from omegaconf import OmegaConf

from plm_lightning.config import load_config
from plm_lightning.models.plm_module import PLMModule


def make_module(**overrides):
    cfg = load_config("digits.yaml", [f"{k}={v}" for k, v in overrides.items()])
    return PLMModule(OmegaConf.to_container(cfg, resolve=True), in_channels=1)


def test_labels_do_not_change_the_loss():
    torch.manual_seed(0)
    module = make_module(**{"method.proxies.count": 0})
    images = torch.randn(10, 1, 16, 16)
    labels = torch.arange(10) % 5
    a = module.training_step((images, labels, torch.arange(10)), 0)["loss"]
    b = module.training_step((images, labels.flip(0), torch.arange(10)), 0)["loss"]
    assert torch.equal(a, b)


def test_teacher_is_frozen_eval_and_follows_by_ema():
    module = make_module()
    module.train()
    assert module.student.training and not module.teacher.training
    assert not any(p.requires_grad for p in module.teacher.parameters())
    with torch.no_grad():
        for p in module.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in module.teacher.parameters()]
    module.on_train_batch_end(None, None, 0)
    m = module.cfg.method.teacher.momentum
    for b, t, s in zip(before, module.teacher.parameters(), module.student.parameters()):
        assert torch.allclose(t, m * b + (1 - m) * s)


def test_views_make_one_similarity_over_every_view():
    """data.augmentation.views=2: B items of V views each are embedded as V * B points (view-major), the similarity
    covers all of them, and the quality monitor reads the labels repeated the same way."""
    from plm_lightning.callbacks.similarity_quality import SimilarityQualityMonitor

    cfg = load_config("synthetic.yaml", ["data.augmentation.views=2", "method.proxies.count=0"])
    module = PLMModule(OmegaConf.to_container(cfg, resolve=True), in_channels=32)
    torch.manual_seed(0)
    x = torch.randn(10, 1, 32).repeat(1, 2, 1)  # two identical views of 10 items: B x V x D
    labels = torch.arange(10) % 3
    out = module.training_step((x, labels, torch.arange(10)), 0)
    s = out["s"]
    assert s.shape == (20, 20)
    # The two views of an item are identical points: similarity 1 between them.
    assert torch.allclose(s[torch.arange(10), torch.arange(10) + 10], torch.ones(10, dtype=s.dtype))
    monitor = SimilarityQualityMonitor(purity_k=1)
    monitor.on_train_batch_end(None, module, out, (x, labels, torch.arange(10)), 0)
    assert float(monitor.quality.compute()["purity"]) == 1.0  # each point's most similar is its own other view

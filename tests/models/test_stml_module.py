"""The STML LightningModule: two heads on one backbone, a frozen EMA teacher of the backbone and the auxiliary head,
labels never reach the loss, views of one image (and copies of one image) are marked by their dataset index."""

import torch
from omegaconf import OmegaConf

from plm_lightning.config import load_config
from plm_lightning.models.derived import stml_neighbours, training_views
from plm_lightning.models.stml_module import STMLModule


def make_module(config="digits.yaml", **overrides):
    cfg = load_config(config, ["method.name=stml", *[f"{k}={v}" for k, v in overrides.items()]])
    return STMLModule(OmegaConf.to_container(cfg, resolve=True), in_channels=32 if config == "synthetic.yaml" else 1)


def test_defaults_are_stmls_two_views_and_k_times_views():
    cfg = load_config("digits.yaml", ["method.name=stml"])
    assert training_views(cfg) == 2 and stml_neighbours(cfg) == 2 * cfg.data.sampler.neighbours_per_seed
    assert training_views(load_config("digits.yaml")) == 1  # PLM's default stays one view
    assert training_views(load_config("digits.yaml", ["method.name=stml", "data.augmentation.views=3"])) == 3
    module = make_module()
    assert module.student.head.linear.out_features == module.cfg.model.embedding_dim
    assert module.auxiliary_head.linear.out_features == 1024
    assert module.teacher.head.linear.out_features == 1024  # the teacher has the auxiliary head only


def test_labels_do_not_change_the_loss_and_views_are_marked_by_index():
    torch.manual_seed(0)
    module = make_module()
    images = torch.randn(10, 2, 1, 16, 16)  # B x V x C x H x W
    labels = torch.arange(10) % 5
    a = module.training_step((images, labels, torch.arange(10)), 0)
    b = module.training_step((images, labels.flip(0), torch.arange(10)), 0)
    assert torch.equal(a["loss"], b["loss"]) and a["s"].shape == (20, 20)
    # An image that two seeds brought into the batch: its copies are marked as one image, which changes W.
    dup = torch.arange(10)
    dup[7] = 3
    c = module.training_step((images, labels, dup), 0)
    assert not torch.equal(a["s"], c["s"])


def test_both_heads_and_the_backbone_get_gradients():
    module = make_module()
    out = module.loss_terms(torch.randn(10, 2, 1, 16, 16), torch.arange(10))
    out["loss"].backward()
    for name, part in (("backbone", module.student.backbone), ("f", module.student.head), ("g", module.auxiliary_head)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name
    assert all(p.grad is None for p in module.teacher.parameters())
    # the optimiser's groups: backbone and f head (EmbeddingModule), the auxiliary head, each parameter once
    (group,) = module.extra_param_groups()
    assert group["name"] == "auxiliary_head" and len(group["params"]) == 2
    trained = [*module.student.parameters(), *group["params"]]
    assert len({id(p) for p in trained}) == len(trained)


def test_teacher_is_frozen_eval_and_follows_backbone_and_auxiliary_head_by_ema():
    module = make_module()
    module.train()
    assert module.student.training and module.auxiliary_head.training and not module.teacher.training
    # the teacher starts as a copy: same backbone and auxiliary head
    for t, s in zip(module.teacher.head.parameters(), module.auxiliary_head.parameters()):
        assert torch.equal(t, s)
    with torch.no_grad():
        for p in [*module.student.parameters(), *module.auxiliary_head.parameters()]:
            p.add_(1.0)
    before = [p.clone() for p in module.teacher.parameters()]
    module.on_train_batch_end(None, None, 0)
    m = module.cfg.method.teacher.momentum
    sources = [*module.student.backbone.parameters(), *module.auxiliary_head.parameters()]
    for b, t, s in zip(before, module.teacher.parameters(), sources):
        assert torch.allclose(t, m * b + (1 - m) * s)


def test_exported_student_is_the_target_embedding():
    """Evaluation, checkpoints' student.* and plm-embed see f (model.embedding_dim), never the auxiliary g."""
    module = make_module()
    module.eval()
    x = torch.randn(4, 1, 16, 16)
    assert module(x).shape == (4, module.cfg.model.embedding_dim)
    keys = module.state_dict().keys()
    assert any(k.startswith("auxiliary_head.") for k in keys) and not any(k.startswith("student.aux") for k in keys)


def test_stml_similarity_as_an_estimator_and_in_plms_loss():
    """method.similarity=stml: STML's W as PLM's s (one view per item, so k = neighbours per seed), diagonal 1, and
    a kernel similarity to the proxies; a run of method.name=stml measures with it too."""
    from plm_lightning.models.plm_module import PLMModule
    from plm_lightning.models.similarity_estimator import build_similarity
    from plm_lightning.stml import ContextualSimilarity

    cfg = load_config("digits.yaml", ["method.similarity=stml"])
    est = build_similarity(cfg)
    assert isinstance(est, ContextualSimilarity) and est.k == cfg.data.sampler.neighbours_per_seed
    x = torch.nn.functional.normalize(torch.randn(12, 8, dtype=torch.float64), dim=1)
    result = est(x, proxy_points=x[:3])
    assert torch.equal(result.s.diagonal(), torch.ones(12, dtype=torch.float64)) and result.s_proxy.shape == (12, 3)
    assert isinstance(build_similarity(load_config("digits.yaml", ["method.name=stml"])), ContextualSimilarity)
    module = PLMModule(OmegaConf.to_container(cfg, resolve=True), in_channels=1)
    out = module.training_step((torch.randn(10, 1, 16, 16), torch.zeros(10, dtype=torch.long), torch.arange(10)), 0)
    assert torch.isfinite(out["loss"])

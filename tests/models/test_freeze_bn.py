"""model.freeze_bn: the backbone's batch norm keeps its running statistics and affine parameters through training
steps, also after model.train() (which Lightning calls every epoch), while the rest of the network trains."""

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plm_lightning.config import load_config
from plm_lightning.models.head import build_embedder
from plm_lightning.models.plm_module import PLMModule


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Affine parameters, running statistics and counters of every batch-norm layer."""
    return {
        f"{name}.{key}": value.clone()
        for name, bn in module.named_modules()
        if isinstance(bn, nn.modules.batchnorm._BatchNorm)
        for key, value in bn.state_dict().items()
    }


def small_embedder(freeze_bn: bool):
    torch.manual_seed(0)
    return build_embedder(
        "small_cnn", embedding_dim=8, pooling="avg+max", pretrained=False, in_channels=1, width=4, freeze_bn=freeze_bn
    )


def test_frozen_batch_norm_survives_train_and_a_step():
    embedder = small_embedder(freeze_bn=True)
    with torch.no_grad():  # non-trivial statistics, so "unchanged" means something
        for bn in batch_norms(embedder):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    before = bn_state(embedder.backbone)
    conv_before = embedder.backbone[0][0].weight.clone()
    embedder.eval()
    embedder.train()  # what Lightning does at the start of every epoch
    assert embedder.training and embedder.head.training
    assert all(not bn.training for bn in batch_norms(embedder))
    assert all(not p.requires_grad for bn in batch_norms(embedder) for p in bn.parameters())
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=0.1, weight_decay=0.1)  # all of them, as PLMModule
    for _ in range(2):
        loss = embedder(torch.randn(6, 1, 8, 8) * 3 + 1).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = bn_state(embedder.backbone)
    assert before.keys() == after.keys() and len(before) == 4 * 5  # 4 BN layers: weight, bias, mean, var, count
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(conv_before, embedder.backbone[0][0].weight)  # the convolutions do train


def test_without_freeze_bn_statistics_move():
    embedder = small_embedder(freeze_bn=False)
    embedder.train()
    before = embedder.backbone[0][1].running_mean.clone()
    embedder(torch.randn(6, 1, 8, 8) + 1)
    assert not torch.equal(before, embedder.backbone[0][1].running_mean)


class _Tiny(L.LightningModule):
    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.bn_training_seen: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.bn_training_seen += [bn.training for bn in batch_norms(self.embedder)]
        return self.embedder(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_frozen_batch_norm_through_lightning_epochs(tmp_path):
    embedder = small_embedder(freeze_bn=True)
    before = bn_state(embedder.backbone)
    conv_before = embedder.backbone[0][0].weight.clone()
    module = _Tiny(embedder)
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8) + 2), batch_size=4)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, loader)
    assert len(module.bn_training_seen) == 2 * 2 * 4 and not any(module.bn_training_seen)
    after = bn_state(embedder.backbone)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(conv_before, embedder.backbone[0][0].weight)


def test_plm_module_freezes_student_and_teacher_batch_norm():
    cfg = load_config("digits.yaml", ["model.freeze_bn=true"])
    module = PLMModule(OmegaConf.to_container(cfg, resolve=True), in_channels=1)
    module.train()
    assert module.student.training and module.student.freeze_bn
    assert not any(bn.training for bn in batch_norms(module.student) + batch_norms(module.teacher))
    assert not any(p.requires_grad for bn in batch_norms(module.student) for p in bn.parameters())
    assert load_config("digits.yaml", []).model.freeze_bn is False  # off unless asked for


def test_bn_inception_freeze_bn_keeps_all_69_layers_in_eval():
    embedder = build_embedder(
        "bn_inception", embedding_dim=64, pooling="avg+max", pretrained=False, in_channels=3, freeze_bn=True
    )
    embedder.train()
    norms = batch_norms(embedder.backbone)
    assert len(norms) == 69 and not any(bn.training for bn in norms)

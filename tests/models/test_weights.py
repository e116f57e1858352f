"""model.weights=PATH: the backbone starts from a local file (a plm-fit checkpoint, a state_dict, or the published
file of the backbone's pretrained weights); a file that does not fit stops the run with one line."""

from pathlib import Path

import pytest
import torch
from runner import run_cli

from plm_lightning.models.backbones import BACKBONES
from plm_lightning.models.head import build_embedder
from plm_lightning.models.weights import WeightsFileError, load_backbone_weights


def small(width=8, seed=0):
    torch.manual_seed(seed)
    return BACKBONES["small_cnn"].build(pretrained=False, in_channels=1, width=width)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("prefix", ["", "backbone.", "student.backbone.", "module."])
def test_state_dict_with_or_without_a_prefix(tmp_path, prefix):
    source = small(seed=1)
    path = tmp_path / "w.pt"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    target = small(seed=2)
    load_backbone_weights(target, "small_cnn", path)
    assert same_weights(source, target)


def test_plm_checkpoint_gives_its_students_backbone(tmp_path):
    source = build_embedder("small_cnn", embedding_dim=4, pooling="avg", pretrained=False, in_channels=1, width=8)
    state = {f"student.{k}": v for k, v in source.state_dict().items()}
    state.update({f"teacher.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()})
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": {"model": {"backbone": "small_cnn"}}}}, path)
    target = small(seed=3)
    load_backbone_weights(target, "small_cnn", path)
    assert same_weights(source.backbone, target)  # the student's, not the teacher's zeros


def test_published_torchvision_files_map_onto_our_modules(tmp_path):
    import torchvision

    for name, ctor in (("resnet50", torchvision.models.resnet50), ("googlenet", torchvision.models.googlenet)):
        torch.manual_seed(0)
        kwargs = {"aux_logits": True, "init_weights": True} if name == "googlenet" else {}
        published = ctor(weights=None, **kwargs).state_dict()  # the file's layout, classifier and aux heads included
        path = tmp_path / f"{name}.pth"
        torch.save(published, path)
        ours = BACKBONES[name].build(pretrained=False, in_channels=3, width=0)
        load_backbone_weights(ours, name, path)
        own = ours.state_dict()
        native = BACKBONES[name].native_keys(published)
        assert all(torch.equal(own[k], native[k]) for k in own if not k.endswith("num_batches_tracked"))


def test_mismatches_are_one_line_naming_the_key(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(small(width=16).state_dict(), path)
    with pytest.raises(WeightsFileError, match=r"model\.weights.*does not fit the small_cnn backbone: .*shape"):
        load_backbone_weights(small(width=8), "small_cnn", path)
    torch.save({"0.0.weight": torch.zeros(8, 1, 3, 3)}, path)
    with pytest.raises(WeightsFileError, match="tensors are missing"):
        load_backbone_weights(small(width=8), "small_cnn", path)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {"model": {"backbone": "mlp"}}}}, path)
    with pytest.raises(WeightsFileError, match="checkpoint of a 'mlp' backbone"):
        load_backbone_weights(small(), "small_cnn", path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsFileError, match="truncated, corrupt or not a torch checkpoint"):
        load_backbone_weights(small(), "small_cnn", path)


def test_a_pickle_with_code_is_refused_not_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsFileError):
        load_backbone_weights(small(), "small_cnn", path)
    assert not (tmp_path / "pwned").exists()


def test_fit_starts_from_the_file_and_bad_files_exit_2(tmp_path):
    from omegaconf import OmegaConf

    from plm_lightning.config import load_config
    from plm_lightning.models.plm_module import PLMModule

    cfg = load_config("digits.yaml")
    donor = PLMModule(OmegaConf.to_container(cfg, resolve=True), in_channels=1)
    path = tmp_path / "donor.pt"
    torch.save(donor.student.backbone.state_dict(), path)
    torch.manual_seed(123)  # another initialisation everywhere else
    module = PLMModule(
        OmegaConf.to_container(load_config("digits.yaml", [f"model.weights={path}"]), resolve=True), in_channels=1
    )
    assert same_weights(module.student.backbone, donor.student.backbone)
    assert same_weights(module.teacher.backbone, donor.student.backbone)  # the teacher starts as the student

    result = run_cli(
        "fit", "--config", "digits.yaml", f"model.weights={tmp_path / 'missing.pt'}", f"run.dir={tmp_path / 'r1'}"
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "model.weights" in result.stderr and "does not exist" in result.stderr
    torch.save(small(width=16).state_dict(), path)
    result = run_cli("fit", "--config", "digits.yaml", f"model.weights={path}", f"run.dir={tmp_path / 'r2'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "does not fit the small_cnn backbone" in result.stderr

"""``model.weights=PATH``: start the backbone from a local file, the way a user on an offline cluster brings
pretrained weights (or a backbone pretrained with this framework, as the glyphs benchmark does).

Accepted files, all read with ``torch.load(weights_only=True)`` (data, never code):
- a plm-fit checkpoint: its student's backbone (the checkpoint's ``model.backbone`` must be this run's);
- a state_dict of this backbone, with or without a ``student.backbone.`` / ``backbone.`` / ``module.`` prefix;
- the published file of the backbone's pretrained weights (what ``model.pretrained=true`` downloads: torchvision's
  GoogLeNet / ResNet-50 files, the pretrainedmodels BN-Inception file), mapped by ``BackboneSpec.native_keys``.
Keys of the file that the backbone does not have (a classifier, auxiliary heads, an embedding head) are ignored;
every key the backbone has must be present with its shape, or the run stops with one line naming the first
difference.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import torch
from torch import nn

from plm_lightning.models.backbones import BACKBONES, PretrainedWeightsError
from plm_lightning.utils.checkpoint_io import load_checkpoint_file

_PREFIXES = ("student.backbone.", "backbone.", "module.")


class WeightsFileError(PretrainedWeightsError):
    """model.weights names a file that is not usable for this backbone (one line; plm-fit exits with 2)."""


def _error(path: str | os.PathLike, reason: str) -> WeightsFileError:
    return WeightsFileError(f"invalid value for config key 'model.weights': {str(path)!r} ({reason})")


def read_weights_file(path: str | os.PathLike, backbone: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (see the module docstring), before any key mapping."""
    try:
        state: Any = load_checkpoint_file(path)
    except FileNotFoundError:
        raise _error(path, "file does not exist") from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise _error(path, " ".join(str(exc).split())) from None
    if not isinstance(state, dict):
        raise _error(path, f"holds a {type(state).__name__}, not a state_dict or a checkpoint")
    hparams = state.get("hyper_parameters")
    if isinstance(hparams, dict) and isinstance(hparams.get("config"), dict) and "state_dict" in state:
        trained = (hparams["config"].get("model") or {}).get("backbone")
        if trained != backbone:
            raise _error(
                path, f"a plm-fit checkpoint of a {trained!r} backbone; this run's model.backbone is {backbone!r}"
            )
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise _error(path, "no tensors in it: not a state_dict or a checkpoint")
    return tensors


def _candidates(state: dict[str, torch.Tensor], backbone: str) -> Iterator[dict[str, torch.Tensor]]:
    yield state
    for prefix in _PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped:
            yield stripped
    native: Callable | None = BACKBONES[backbone].native_keys
    if native is not None:
        yield native(state)


def load_backbone_weights(net: nn.Module, backbone: str, path: str | os.PathLike) -> None:
    """Copy the weights that ``path`` holds into ``net`` (the backbone of ``backbone``); WeightsFileError if they do
    not fit. ``num_batches_tracked`` counters may be absent (older published files): they stay as they are."""
    state = read_weights_file(path, backbone)
    own = net.state_dict()
    required = [k for k in own if not k.endswith("num_batches_tracked")]
    best: tuple[int, list[str], list[str], dict[str, torch.Tensor]] | None = None
    for candidate in _candidates(state, backbone):
        missing = [k for k in required if k not in candidate]
        wrong = [k for k in required if k in candidate and candidate[k].shape != own[k].shape]
        if not missing and not wrong:
            net.load_state_dict({k: v for k, v in candidate.items() if k in own}, strict=False)
            return
        matched = len(required) - len(missing) - len(wrong)
        if best is None or matched > best[0]:
            best = (matched, missing, wrong, candidate)
    assert best is not None
    _, missing, wrong, candidate = best
    if wrong:
        key = wrong[0]
        detail = f"{key} has shape {tuple(candidate[key].shape)} in the file, {tuple(own[key].shape)} in the model"
    else:
        detail = f"{len(missing)} of its {len(required)} tensors are missing, e.g. {missing[0]}"
    raise _error(path, f"does not fit the {backbone} backbone: {detail}")

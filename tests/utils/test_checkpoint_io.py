"""Checkpoints are data: files that need arbitrary unpickling are refused, saves are atomic."""

import pickle

import pytest
import torch

from plm_lightning.utils.checkpoint_io import SafeCheckpointIO, load_checkpoint_file


class Payload:
    def __reduce__(self):  # what a malicious checkpoint would do on unpickling
        return (print, ("executed!",))


def test_code_in_a_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=2)  # torch.save's protocol: the loader meets the call
    with pytest.raises(ValueError, match="need code to load") as info:
        load_checkpoint_file(path)
    assert "executed!" not in capsys.readouterr().out
    assert "weights_only=False" not in str(info.value) and "weights_only` set to `False" not in str(info.value)


def test_a_foreign_pickle_is_refused_unexecuted(tmp_path, capsys):
    path = tmp_path / "foreign.pkl"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=4)  # framed: no pickle torch's plain-data reader reads
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_checkpoint_file(path)
    assert "executed!" not in capsys.readouterr().out


def test_save_then_load_round_trip_leaves_no_temporary_files(tmp_path):
    io = SafeCheckpointIO()
    path = tmp_path / "sub" / "a.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)
    assert io.load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["a.ckpt"]
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")

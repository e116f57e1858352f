"""Quiet the Lightning messages that are not the user's to act on; real warnings stay.

- "`isinstance(treespec, LeafSpec)` is deprecated": Lightning's own use of a torch API, on every run.
- the "litlogger" tip: an advertisement, on every run.
- "The `srun` command is available on your system but is not used": on a machine with SLURM installed, every local
  run; plm-slurm writes the srun line into the job script itself.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *needles: str) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


_FILTER = _DropMessages("litlogger")


def quiet_lightning_noise() -> None:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system but is not used.*")
    from lightning_utilities.core import rank_zero

    # rank_zero_info logs to lightning_utilities' module-level `log`, which Lightning's packages reassign on import.
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    for logger in {rank_zero.log, *map(logging.getLogger, names)}:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

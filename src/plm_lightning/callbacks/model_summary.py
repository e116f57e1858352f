"""Lightning's parameter summary without its FLOPs column when FLOPs were not counted.

Lightning counts FLOPs only from a module's ``example_input_array``; our modules have none (their input depends on
the dataset), so its table always showed a column of zeros and "0 Total Flops", which reads as a measurement."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.callbacks.model_summary import log
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table


class ParameterSummary(ModelSummary):
    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops == 0:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *summary_data
        )
        if total_flops == 0:
            table = "\n".join(line for line in table.splitlines() if not line.rstrip().endswith("Total Flops"))
        log.info("\n" + table)

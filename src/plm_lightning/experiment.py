"""The composition root: builds the DataModule, LightningModule, callbacks, loggers and Trainer of a run from its
validated config, and runs it. Entry points (cli/) call into here and hold no logic of their own."""

from __future__ import annotations

import netrc
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from plm_lightning import run_directory
from plm_lightning.callbacks import RetrievalEvaluation, SimilarityQualityMonitor, StopAfterEpochs
from plm_lightning.callbacks.model_summary import ParameterSummary
from plm_lightning.callbacks.run_plots import RunPlots
from plm_lightning.callbacks.slurm_requeue import SlurmRequeue
from plm_lightning.callbacks.throughput import Throughput
from plm_lightning.config.loading import to_yaml
from plm_lightning.data.base import DatasetError
from plm_lightning.data.datamodule import RetrievalDataModule
from plm_lightning.models.build import build_model
from plm_lightning.models.embedding_module import EmbeddingModule
from plm_lightning.utils.checkpoint_io import SafeCheckpointIO
from plm_lightning.utils.csv_logger import AtomicCSVLogger
from plm_lightning.utils.io import atomic_write_text
from plm_lightning.utils.lightning_noise import quiet_lightning_noise

# Child processes of Lightning's DDP launcher re-execute the command line; they find the run directory that the
# parent chose here instead of inventing their own timestamp.
RUN_DIR_ENV = "PLM_RUN_DIR"


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT from Ctrl-C, SIGTERM from a scheduler or `kill`) after Lightning's graceful
    shutdown; ``signum`` gives the shell's exit code 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir).expanduser().resolve()
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg.run.name or cfg.data.name
    path = (Path("runs") / f"{name}-{stamp}").resolve()
    os.environ[RUN_DIR_ENV] = str(path)
    return path


def wandb_mode(cfg: DictConfig) -> str:
    """'online' only when an API key is configured, so that a machine without W&B credentials or network never
    blocks on a login; WANDB_MODE in the environment wins, as in wandb itself."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if cfg.logger.wandb_mode != "auto":
        return cfg.logger.wandb_mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        if netrc.netrc().authenticators(host):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    if cfg.logger.csv:
        # Atomic rewrites; an existing metrics.csv (a resumed run) is continued, not replaced.
        loggers.append(AtomicCSVLogger(save_dir=str(run_dir), name="logs", version=""))
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(cfg)
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        run_id = None if run_id in ("", "None") else run_id  # "None": written by an earlier version of fit()
        logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            name=cfg.logger.name or cfg.run.name or run_dir.name,
            save_dir=str(run_dir),
            tags=list(cfg.logger.tags),
            group=cfg.logger.group,
            mode=mode,
            id=run_id,
            resume="allow" if run_id else None,
        )
        loggers.append(logger)
    return loggers


def build(cfg: DictConfig) -> tuple[L.Trainer, EmbeddingModule, RetrievalDataModule, RetrievalEvaluation, Path]:
    run_dir = resolve_run_dir(cfg)
    # The EMA teacher is in eval mode on purpose (its batch norm uses averaged statistics).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    quiet_lightning_noise()
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    module, datamodule = build_model(cfg)
    evaluation = RetrievalEvaluation(
        cfg.eval.ks,
        every_n_epochs=cfg.eval.every_n_epochs,
        before_training=cfg.eval.before_training,
        backend=cfg.eval.backend,
        normalize=cfg.eval.normalize,
        map_r=cfg.eval.map_r,
        nmi=cfg.eval.nmi,
        kmeans=cfg.eval.kmeans,
        memory_budget_mb=cfg.eval.memory_budget_mb,
        seed=cfg.run.seed,
        run_dir=str(run_dir),
        on_device=cfg.eval.on_device,
    )
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best-epoch{epoch:03d}",
        monitor="val/R@1",
        mode="max",
        save_last=False,
        save_top_k=1,
        auto_insert_metric_name=False,
        every_n_epochs=cfg.eval.every_n_epochs,
        save_on_train_epoch_end=True,
    )
    # last.ckpt at the end of every epoch, for resume=auto. Not save_last=True above: since Lightning 2.x that
    # writes last.ckpt only in epochs that also write a top-k checkpoint, so last.ckpt goes stale once R@1 stops
    # improving, and a resumed run would start from the best epoch instead of the last one.
    last = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    loggers = build_loggers(cfg, run_dir)
    callbacks = [evaluation, SimilarityQualityMonitor(purity_k=cfg.data.sampler.neighbours_per_seed), checkpoint, last]
    callbacks.append(ParameterSummary())  # Lightning's, less a FLOPs column it never counts for our modules
    callbacks.append(Throughput())  # train/images_per_sec, train/data_wait_fraction: is loading the bottleneck?
    if cfg.eval.plots:  # draws what the evaluation hands it (RetrievalEvaluation.subscribe)
        callbacks.insert(1, RunPlots(cfg, evaluation, str(run_dir)))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if cfg.trainer.stop_after_epochs is not None:
        callbacks.append(StopAfterEpochs(cfg.trainer.stop_after_epochs))
    plugins: list[Any] = [SafeCheckpointIO()]
    if SLURMEnvironment.detect():
        # Requeue at an epoch boundary, which resumes exactly, instead of Lightning's mid-step hpc checkpoint.
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(SlurmRequeue())
    trainer_cfg = cfg.trainer
    world = trainer_cfg.devices * trainer_cfg.num_nodes
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        enable_model_summary=False,  # ParameterSummary in the callbacks prints it
        max_epochs=trainer_cfg.max_epochs,
        max_steps=trainer_cfg.max_steps,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        precision=trainer_cfg.precision,
        strategy="ddp" if world > 1 else "auto",
        deterministic=trainer_cfg.deterministic,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        limit_train_batches=trainer_cfg.limit_train_batches,
        enable_progress_bar=trainer_cfg.enable_progress_bar,
        # The nearest-neighbour batch sampler shards batches by rank itself; evaluation uses no Lightning loop.
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=loggers if loggers else False,
        callbacks=callbacks,
        plugins=plugins,
    )
    return trainer, module, datamodule, evaluation, run_dir


@rank_zero_only
def _write_config(cfg: DictConfig, run_dir: Path) -> None:
    atomic_write_text(run_dir / "config.yaml", to_yaml(run_directory.stored_config(cfg)))


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one run; returns the metrics summary written to ``run.dir/metrics.json``.

    Nothing is written before the run can start: the run directory and the resume checkpoint are checked
    (run_directory.check_start: RunDirError) and the datasets built (DatasetError) first."""
    run_dir = resolve_run_dir(cfg)
    global_zero = rank_zero_only.rank == 0
    ckpt_path = run_directory.check_start(cfg, run_dir, is_global_zero=global_zero)
    if ckpt_path is not None:
        rank_zero_info(f"{'resume=auto: ' if cfg.resume == 'auto' else ''}resuming from {ckpt_path}")
    elif cfg.resume == "auto":
        rank_zero_info(f"resume=auto: no checkpoint in {run_dir}, starting fresh")
    trainer, module, datamodule, evaluation, run_dir = build(cfg)
    datamodule.setup("fit")  # a dataset that does not build stops the run here, before its folder is written
    evaluation.check_split(datamodule.test_set, cfg.data.name)
    if cfg.method.name == "plm" and cfg.method.proxies.count > len(datamodule.train_set):
        raise DatasetError(
            f"method.proxies.count={cfg.method.proxies.count} exceeds the {len(datamodule.train_set)} "
            f"images of the {cfg.data.name} training split (each proxy starts at one of them); lower "
            f"method.proxies.count"
        )
    if global_zero:
        run_directory.begin(cfg, run_dir)
    _write_config(cfg, run_dir)
    if global_zero:  # what the augmentation knobs resolved to, before the first step, and kept with the run
        transforms = datamodule.describe_transforms()
        rank_zero_info("transforms:\n  " + transforms.rstrip("\n").replace("\n", "\n  "))
        atomic_write_text(run_dir / "transforms.txt", transforms)
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            # Persist the run id so that a restarted job continues the same W&B run (never the API key). The run is
            # started first: before that, `version` is only the id given to the logger (None on a first start).
            atomic_write_text(run_dir / "wandb_id.txt", str(logger.experiment.id) + "\n")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:
        if trainer.interrupted:  # Lightning turns Ctrl-C and SIGTERM into exit(1) after its graceful shutdown
            raise Interrupted(
                signal.SIGTERM if getattr(trainer, "received_sigterm", False) else signal.SIGINT
            ) from None
        raise
    summary = evaluation.summary()
    if trainer.is_global_zero:
        print("\n".join(closing_lines(summary, run_dir)), flush=True)
    return summary


def closing_lines(summary: dict[str, Any], run_dir: Path) -> list[str]:
    """What a run ends with: how training changed the headline metrics, and where its results are."""
    lines = []
    initial, final = summary.get("initial"), summary.get("final")
    if initial and final:
        shared = [key for key in final if key in initial]
        better = [f"{key} {final[key] - initial[key]:+.2f}" for key in shared if final[key] > initial[key]]
        worse = [f"{key} {final[key] - initial[key]:+.2f}" for key in shared if final[key] < initial[key]]
        if shared:
            head = f"R@1 {initial['R@1']:.2f} -> {final['R@1']:.2f}; " if "R@1" in shared else ""
            lines.append(
                f"training changed {head}final epoch against before training: improved {', '.join(better) or 'none'};"
                f" worse {', '.join(worse) or 'none'}"
            )
    kept = [
        name + ("/" if (run_dir / name).is_dir() else "")
        for name in ("metrics.json", "config.yaml", "checkpoints", "plots", "logs")
        if (run_dir / name).exists()
    ]
    lines.append(f"results in {run_dir}: {', '.join(kept)}")
    return lines

"""The typed configuration (OmegaConf structured config). Every knob of a run lives here, with its default.

Defaults marked [ours] are this project's choices where the paper is silent (see ../docs/method.md and
docs/method.md); the defaults here are the paper-scale ones, small configs (digits.yaml) override them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


def one_of(default: str, options: Sequence[str]) -> Any:
    """A string field with a fixed set of allowed values: the one list that validation (config.validation.CHOICES),
    its error messages and this file's reader see. Fields whose values are a registry of the code (datasets,
    backbones, similarity estimators, ...) are checked against that registry instead."""
    assert default in options, (default, options)
    return field(default=default, metadata={"choices": tuple(options)})


def declared_choices(schema: Optional[type] = None, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted key -> allowed values of every ``one_of`` field of the schema (nested sections included)."""
    found: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(Config if schema is None else schema):
        key = f"{prefix}{f.name}"
        if "choices" in f.metadata:
            found[key] = f.metadata["choices"]
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            found.update(declared_choices(f.default_factory, key + "."))
    return found


@dataclass
class SyntheticConfig:
    """Classes on curved low-dimensional manifolds with known geometry (data.name=synthetic)."""

    num_classes: int = 20  # the first half trains, the second half is the zero-shot test split
    points_per_class: int = 100
    intrinsic_dim: int = 2  # dimension of each class manifold
    ambient_dim: int = 32
    curvature: float = 1.0  # 0 = flat (affine) pieces; larger = more curved
    noise: float = 0.01  # isotropic Gaussian noise in the ambient space
    separation: float = 1.0  # scale of the distances between class manifolds
    seed: int = 0  # the data is a pure function of these values


@dataclass
class GlyphsConfig:
    """The offline benchmark (data.name=glyphs; plm_lightning/data/glyphs.py, docs/benchmark.md): rendered Unicode
    characters, a labelled source task for pretraining and a target task of 100 + 100 class-disjoint classes."""

    # target: the unlabelled train / zero-shot test classes | source: the pretraining task
    task: str = one_of("target", ("target", "source"))
    classes: int = 100  # target classes per split (the benchmark: 100; fewer for quick tests)
    images_per_class: int = 24  # target images per class
    source_classes: int = 789  # source classes (all 789 by default)
    source_images_per_class: int = 24  # source training images per class (4 more per class form its test split)
    seed: int = 0  # rendering seed: every image is a pure function of it, the task, the class and the image number


@dataclass
class AugmentationConfig:
    """data.augmentation: the training augmentation (the evaluation transform never augments)."""

    enabled: bool = True  # false: no training augmentation at all (every epoch sees the evaluation transform)
    # The training augmentation of photographs (folder, cub, cars196, sop, inshop); the paper's recipe by default:
    # RandomResizedCrop(image_size) keeping this range of the image's area, then a random horizontal flip.
    crop_scale: list[float] = field(default_factory=lambda: [0.16, 1.0])
    # random horizontal flip; null = the dataset's default (photographs: true; digits and glyphs: false, since a
    # mirrored character is another character). Set false for text, signs or any left-right-asymmetric object
    hflip: Optional[bool] = None
    # colour jitter strength s: brightness, contrast and saturation +-0.4 s, hue +-0.1 s (0 = none, the paper's
    # recipe) [ours]
    color_jitter: float = 0.0
    # augmented views of each training image in a batch (B images -> views * B embeddings); the teacher's similarity
    # of two views of one image is high, so the loss also teaches invariance to the augmentation. null = the
    # method's: 1 for plm [ours] and supervised, 2 for stml [STML] (models/derived.py)
    views: Optional[int] = None


@dataclass
class SamplerConfig:
    """data.sampler: the training batches (docs/method.md, "Mini-batches")."""

    batch_size: int = 120  # B, images per training batch (per process)
    neighbours_per_seed: int = 5  # k: each seed brings its k - 1 nearest neighbours (the seed counts as its own first)
    refresh_every: int = 1  # rebuild the nearest-neighbour table from teacher embeddings every N epochs
    # exact: O(N^2 d) k-NN; hnsw / ivf: a faiss approximate index for very large training splits (docs/benchmarks.md)
    index: str = one_of("exact", ("exact", "hnsw", "ivf"))


@dataclass
class LoaderConfig:
    """data.loader: how images reach the network (no effect on results)."""

    eval_batch_size: int = 256  # images per batch of the teacher's embedding pass and of the evaluation
    num_workers: int = 0  # loader processes
    prefetch_factor: int = 2  # batches each loader worker loads ahead (used only when num_workers > 0)


@dataclass
class DataConfig:
    name: str = "digits"  # a registered dataset (data/registry.py): digits, folder, synthetic, glyphs, cub, ...
    # dataset folder (not used by digits / synthetic); null = $PLM_DATA/<name>. Prepare one with `plm-data prepare`
    root: Optional[str] = None
    image_size: int = 227  # train crop / eval centre crop
    resize: int = 256  # eval resize before the centre crop
    train_class_fraction: float = 0.5  # folder datasets: first fraction of the sorted class names is the train split
    # folder datasets: explicit class-disjoint split by class folder name ([] = use train_class_fraction; one list
    # given = the other split gets the remaining classes)
    train_classes: list[str] = field(default_factory=list)
    test_classes: list[str] = field(default_factory=list)
    # benchmarks: compare each split with the official image / class counts; false for a subset or miniature copy
    # (listed files missing on disk are an error either way)
    check_counts: bool = True
    # false: an unreadable (truncated, corrupt) image stops the run naming its path; true: log it, count it and
    # use the next readable image of the same class instead
    skip_unreadable: bool = False
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    glyphs: GlyphsConfig = field(default_factory=GlyphsConfig)


@dataclass
class ModelConfig:
    backbone: str = "googlenet"  # a registered backbone (models/backbones.py): googlenet, resnet50, small_cnn, ...
    pretrained: bool = True  # ImageNet weights (torchvision; bn_inception: pretrainedmodels); need network once
    # A local file to start the backbone from, instead of the download (an offline cluster; the glyphs benchmark's
    # pretrained backbone): a plm-fit checkpoint, a state_dict of the backbone, or the published weights file
    # that model.pretrained would download. The embedding head always starts fresh.
    weights: Optional[str] = None
    embedding_dim: int = 128
    pooling: str = "avg+max"  # models/head.py POOLINGS: avg, max, avg+max (summed)
    width: int = 64  # small_cnn: channels of the first block; mlp: hidden units
    # Backbone batch norm in eval mode (running statistics fixed) with frozen affine parameters: standard for
    # BN-Inception in deep metric learning, whose small batches (of few classes) give poor batch statistics.
    freeze_bn: bool = False


@dataclass
class SupervisedConfig:
    """method.name=supervised: the labelled reference (models/supervised_module.py), not the unsupervised method."""

    temperature: float = 0.05  # normalised-softmax temperature (Zhai & Wu 2019)


@dataclass
class PLMSimilarityConfig:
    """method.plm: the method's similarity, s' = (1 + o/2)^-n_alpha (1 + p)^-n_beta, and the pieces it measures o
    and p against (docs/method.md)."""

    n_alpha: float = 4.0  # [paper form; ours: 4, 1 from the paper's ablation]
    n_beta: float = 1.0
    piece_dim: int = 2  # m [ours]
    max_candidates: Optional[int] = None  # M, candidates per neighbourhood [ours: None = 2 * neighbours_per_seed]
    tau: float = 0.5  # greedy acceptance threshold on the relative residual [ours]
    subset_selection: bool = True  # False = "no subset selection" ablation
    # refit: test a candidate under the piece refitted with it (docs/method.md as written) | current: the m nearest span
    # the first piece, each further candidate is tested against the piece of the members so far [ours]
    greedy_test: str = "refit"  # manifold/pieces.py GREEDY_TESTS
    symmetrize: str = "mean"  # s = mean | min | max of s'(i, j) and s'(j, i) [ours: mean] (SYMMETRIZATIONS)
    # absolute: o and p as measured (the paper's formula on unit vectors) | batch: o and p scaled by sqrt(2) / the
    # batch's median pairwise distance, so s does not depend on how compact the teacher's space is [ours]
    distance_scale: str = "absolute"  # manifold/similarity.py DISTANCE_SCALES
    binary_threshold: Optional[float] = None  # "binary similarity" ablation: s -> 1[s >= threshold]


@dataclass
class GaussianConfig:
    """method.similarity=gaussian (STML's kernel in PLM's loss): s = exp(-||x_i - x_j||^2 / sigma)."""

    sigma: float = 3.0  # [STML's kernel width]


@dataclass
class KNNConfig:
    """method.similarity=knn: s = 1 for a point's k nearest batch neighbours, else 0."""

    k: Optional[int] = None  # [None = data.sampler.neighbours_per_seed]


@dataclass
class KMeansConfig:
    """method.similarity=kmeans: s = 1 within a k-means cluster of the batch, else 0."""

    clusters: Optional[int] = (
        None  # clusters per batch [None = data.sampler.batch_size / data.sampler.neighbours_per_seed]
    )


@dataclass
class STMLConfig:
    """method.name=stml: Self-Taught Metric Learning (Kim et al., CVPR 2022; docs/stml.md). Defaults are STML's
    published ones (its paper and code) unless marked [ours]."""

    sigma: float = 3.0  # Gaussian kernel width of the teacher's similarity, exp(-||t_i - t_j||^2 / sigma)
    delta: float = 1.0  # relaxed contrastive margin on row-mean-normalised distances (STML's SOP runs: 0.9)
    # k of the contextual similarity's k-reciprocal neighbourhoods [None = neighbours_per_seed x views, as STML's code]
    neighbours: Optional[int] = None
    auxiliary_dim: int = 1024  # the larger embedding g the target embedding (model.embedding_dim) distils from
    kl_temperature: float = 1.0  # temperature of the self-distillation softmax over -distances
    lambda_kl: float = 1.0  # weight of the self-distillation term (STML: L_RC + L_KL)
    normalize_student: bool = False  # L2-normalise f and g before the row-mean normalisation (STML: off)
    # the embeddings nearest-neighbour batches are built from: the student's auxiliary embedding g (STML's code) or
    # the teacher's (the PLM path)
    batches_from: str = one_of("student", ("student", "teacher"))


@dataclass
class ProxyConfig:
    """method.proxies: the learnable proxy manifold (N_rho points with their pieces) [paper: concept; details ours]."""

    count: int = 100  # N_rho [ours, from the paper's ablation: saturates near 100-400]; 0 = no proxies
    # data: teacher embeddings of random images + local PCA [ours] | random
    init: str = one_of("data", ("data", "random"))
    neighbours: Optional[int] = (
        None  # q for L_nbhd (and L_proxy's nearest) [ours: None = data.sampler.neighbours_per_seed]
    )
    # L_proxy over every (point, proxy) pair ("all") or each point's q most similar proxies ("nearest") [ours]
    pairs: str = one_of("all", ("all", "nearest"))


@dataclass
class LossConfig:
    """method.loss: L = L_point + lambda_proxy L_proxy + lambda_nbhd L_nbhd; distances regressed on delta (1 - s)."""

    # [ours; 1.0 until the glyphs benchmark measured 0.1 better: R@1 79.82 +- 0.97 vs 78.75 +- 0.33, 3 seeds
    # (docs/method.md); without proxies 80.86 +- 0.38]
    lambda_proxy: float = 0.1
    lambda_nbhd: float = 1.0  # [ours]
    delta: float = 1.0  # target distance scale [ours]
    normalize_student: bool = True  # z L2-normalised [ours]


@dataclass
class TeacherConfig:
    """method.teacher: the EMA teacher whose embeddings x the similarity is measured in."""

    momentum: float = 0.999  # EMA momentum [ours, following STML]
    normalize: bool = True  # x L2-normalised [ours]


@dataclass
class MethodConfig:
    # plm: the method (unsupervised) | stml: STML, the paper's strongest baseline (unsupervised; method.stml) |
    # supervised: a labelled reference (an upper bound; backbone pretraining)
    name: str = one_of("plm", ("plm", "stml", "supervised"))
    # The similarity estimator (manifold/estimators.py): plm, or the baselines / ablations gaussian, knn, kmeans;
    # each has its knobs in the section of its name
    similarity: str = "plm"
    plm: PLMSimilarityConfig = field(default_factory=PLMSimilarityConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    proxies: ProxyConfig = field(default_factory=ProxyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    stml: STMLConfig = field(default_factory=STMLConfig)


@dataclass
class OptimConfig:
    name: str = one_of("adamw", ("adamw", "adam", "sgd"))
    lr: float = 1e-4
    weight_decay: float = 1e-2
    head_lr: Optional[float] = None  # embedding head learning rate [None = lr]
    proxy_lr: Optional[float] = None  # proxy learning rate, no weight decay [None = lr]
    momentum: float = 0.9  # sgd only
    scheduler: str = one_of("cosine", ("cosine", "none"))
    warmup_epochs: int = 0


@dataclass
class TrainerConfig:
    max_epochs: int = 90
    max_steps: int = -1  # stop after this many optimizer steps in total (smoke runs); -1 = no limit
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = one_of("32-true", ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true"))
    deterministic: bool = False
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 10
    limit_train_batches: Optional[float] = None  # for smoke runs: a fraction (<= 1.0) or a number of batches
    enable_progress_bar: bool = True
    # Stop cleanly after this many epochs of this invocation (max_epochs, and so the schedule, stay as they are);
    # continue later with resume=auto. None = run to max_epochs.
    stop_after_epochs: Optional[int] = None


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    every_n_epochs: int = 1
    before_training: bool = True
    backend: str = one_of("auto", ("auto", "faiss", "torch"))
    normalize: bool = True  # L2-normalise before search (Euclidean on unit vectors = cosine ranking)
    map_r: bool = True
    nmi: bool = True
    # NMI's k-means: torch on the evaluation device (GPU), or faiss on the CPU; auto: torch when evaluating on a GPU
    kmeans: str = one_of("auto", ("auto", "faiss", "torch"))
    memory_budget_mb: float = 512.0
    on_device: bool = True  # compute the metrics on the training device (GPU): exact either way, faster there
    plots: bool = True  # PNGs in run.dir/plots (and W&B images): Recall@K curve, retrieval grid, s histograms, PCA


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: bool = False
    # auto: online when a W&B API key is configured (WANDB_API_KEY or netrc), else offline; never blocks without one
    wandb_mode: str = one_of("auto", ("auto", "online", "offline", "disabled"))
    project: str = "plm-lightning"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    # W&B group: ties runs together (plm-fit --seeds sets it to the request's folder name when unset)
    group: Optional[str] = None


@dataclass
class RunConfig:
    dir: Optional[str] = None  # None = runs/<data.name>-<timestamp>
    # A run.dir that already holds a run is refused (resume=auto continues it); true removes that run's files first
    overwrite: bool = False
    seed: int = 0
    name: Optional[str] = None


@dataclass
class PaperConfig:
    """The published numbers a bundled config reproduces: data for plm-report, which prints them beside the measured
    mean +- std and the difference. Not used in training."""

    source: Optional[str] = None  # e.g. "PLM (CPAL 2024), Table 1: CUB-200, GoogLeNet, 128-d"
    metrics: dict[str, float] = field(default_factory=dict)  # metric name (as in metrics.json) -> value in %


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    # null = start fresh | auto = continue from the newest of run.dir/checkpoints/last.ckpt and run.dir/hpc_ckpt_*.ckpt
    # (start fresh when there is none) | a checkpoint path
    resume: Optional[str] = None

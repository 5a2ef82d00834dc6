"""Training configs: one typed tree for every stage (PIT, MixIT, codec tokens, AV).

A stage config is a YAML file under ``hubbub/finetune/configs`` or ``hubbub/pretrain/configs``
(``base: other`` inherits and changes a few fields), plus ``--set key=value`` overrides. Every
stage has a ``*_debug`` config: a tiny model that trains in seconds on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from hubbub.config import ConfigError, apply_overrides, from_dict, load_with_base
from hubbub.models import MODELS
from hubbub.models.factory import AUDIO_VISUAL


@dataclass
class ModelConfig:
    name: str = "convtasnet"
    size: Literal["debug", "small", "paper"] = "debug"
    num_sources: int = 2
    kwargs: dict[str, Any] = field(default_factory=dict)   # changes on top of the size's config

    def validate(self):
        if self.name not in MODELS:
            raise ConfigError("model.name", f"unknown model {self.name!r} (known: {', '.join(sorted(MODELS))})")
        if not 1 <= self.num_sources <= 16:
            raise ConfigError("model.num_sources", f"must be within 1..16, got {self.num_sources}")


@dataclass
class DataConfig:
    shards: str = ""                      # a corpus made by `hubbub simulate` (--shards)
    train_split: str = "train"
    valid_split: str = "valid"
    target: Literal["reverberant", "early", "direct", "dry"] = "reverberant"
    crop_s: float = 2.0                   # random training crops
    batch_size: int = 4                   # per process
    num_workers: int = 0
    persistent_workers: bool = False      # keep the DataLoader workers from one epoch to the next
    shuffle_buffer: int = 64
    valid_max_samples: int = 32           # evaluation during training: the first N valid samples

    def validate(self):
        if self.crop_s <= 0:
            raise ConfigError("data.crop_s", "must be > 0")
        if self.batch_size < 1:
            raise ConfigError("data.batch_size", "must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 5.0                # max gradient norm; 0 disables
    grad_accum: int = 1                   # micro-batches per optimizer step

    def validate(self):
        if not 0 < self.lr <= 1:  # AdamW: beyond 1 every step moves each weight by ~lr, and torch overflows
            raise ConfigError("optim.lr", f"must be within (0, 1] (AdamW's step size), got {self.lr}")
        if self.grad_accum < 1:
            raise ConfigError("optim.grad_accum", "must be >= 1")


@dataclass
class ScheduleConfig:
    kind: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05            # cosine ends at lr * this


@dataclass
class LossConfig:
    kind: Literal["si_snr", "snr"] = "si_snr"
    tau: float = 1e-3                     # snr soft threshold (30 dB cap) and absent-source floor
    zero_ref: Literal["energy", "ignore"] = "energy"


@dataclass
class MixITConfig:
    """MixIT (``hubbub pretrain mixit``, and the unlabelled half of semi-supervised PIT)."""

    num_outputs: int = 0                  # M estimates; 0: twice the most speakers per mixture
    consistency: Literal["none", "uniform", "learned"] = "uniform"   # mixture consistency projection
    tau: float = 10 ** (-30 / 10)         # soft threshold: SNRs capped at 30 dB (Wisdom et al. 2020)
    recordings: str = ""                  # a folder of unlabelled recordings instead of data.shards
    segment_s: float = 4.0                # recordings are cut into segments of this length
    sample_rate_hz: int = 16000           # ... and resampled to this rate

    def validate(self):
        if not 0 <= self.num_outputs <= 12:
            raise ConfigError("mixit.num_outputs", f"must be within 0..12 (0: automatic), got {self.num_outputs}")
        if self.tau < 0:
            raise ConfigError("mixit.tau", "must be >= 0")
        if self.segment_s <= 0:
            raise ConfigError("mixit.segment_s", "must be > 0")


@dataclass
class CodecConfig:
    """Codec-token pretraining (``hubbub pretrain codec``)."""

    model: str = ""                       # EnCodec: a local directory or hub id (facebook/encodec_24khz)
    bandwidth_kbps: float | None = None   # picks the number of codebooks; None: the codec's default
    task: Literal["masked", "sources"] = "masked"   # mixture tokens at masked spans, or per-source tokens with PIT
    source_target: str = "reverberant"    # the source image whose tokens "sources" predicts
    mask_prob: float = 0.08               # probability that a token frame starts a masked span (HuBERT)
    mask_span: int = 10                   # masked span length in token frames
    codebook_decay: float = 0.5           # codebook q's loss weight is decay**q (coarse codebooks count more)
    # tokens cached in the shards (hubbub shards tokens): "auto" uses them when they are of this
    # codec, "require" fails without them, "never" computes them on the fly
    cached: Literal["auto", "require", "never"] = "auto"

    def validate(self):
        if not 0 < self.mask_prob < 1:
            raise ConfigError("codec.mask_prob", "must be within (0, 1)")
        if self.mask_span < 1:
            raise ConfigError("codec.mask_span", "must be >= 1")
        if not 0 < self.codebook_decay <= 1:
            raise ConfigError("codec.codebook_decay", "must be within (0, 1]")


@dataclass
class SemiConfig:
    """Semi-supervised PIT: supervised PIT plus MixIT on unlabelled mixtures in the same step."""

    unlabelled: str = ""                  # a corpus of unlabelled mixtures ("" disables)
    split: str = "train"
    weight: float = 1.0                   # loss = PIT + weight * MixIT
    batch_size: int = 0                   # mixtures of mixtures per step; 0: data.batch_size

    def validate(self):
        if self.weight < 0:
            raise ConfigError("semi.weight", "must be >= 0")


@dataclass
class AVConfig:
    """Audio-visual target-speaker extraction (``hubbub finetune av``)."""

    vq_weight: float = 0.1                # loss += vq_weight * the lip-token quantiser's loss
    recon_weight: float = 0.1             # ... + recon_weight * the lip-frame reconstruction L1

    def validate(self):
        if self.vq_weight < 0 or self.recon_weight < 0:
            raise ConfigError("av.vq_weight", "auxiliary loss weights must be >= 0")


@dataclass
class TrainConfig:
    # The stage this config trains: the one place it is kept. The Solver reads it, run.json records
    # it, a resume keeps it, and each stage's function refuses a config of another.
    stage: Literal["pit", "av", "mixit", "codec"] = "pit"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mixit: MixITConfig = field(default_factory=MixITConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    av: AVConfig = field(default_factory=AVConfig)
    steps: int = 200                      # optimizer steps
    log_every: int = 10
    eval_every: int = 100                 # 0: only at the end
    ckpt_every: int = 50
    keep_checkpoints: int = 2
    precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    init: str | None = None               # a run or model dir whose backbone starts this run
    log_sample_keys: bool = False         # write the keys each rank trained on (tests, audits)

    def validate(self):
        if self.steps < 1:
            raise ConfigError("steps", "must be >= 1")
        for name in ("log_every", "ckpt_every", "keep_checkpoints"):  # keeping none would delete each as written
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be >= 1")
        if (self.model.name in AUDIO_VISUAL) != (self.stage == "av"):
            raise ConfigError("model.name", f"{self.model.name!r} cannot be trained by the {self.stage!r} stage: "
                                            "audio-visual extractors (model(mix, lips)) train with `hubbub finetune av`, "
                                            "separators with the other stages")


def config_dirs() -> list[Path]:
    return [Path(str(resources.files(pkg).joinpath("configs"))) for pkg in ("hubbub.finetune", "hubbub.pretrain")]


def _find(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    for d in config_dirs():
        if (d / f"{name}.yaml").exists():
            return d / f"{name}.yaml"
    known = sorted(p.stem for d in config_dirs() if d.exists() for p in d.glob("*.yaml"))
    raise ConfigError("config", f"{name!r} is neither a config file nor a built-in config ({', '.join(known)})")


def load_train_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A built-in config name (``pit_debug``) or YAML path, plus overrides -> :class:`TrainConfig`."""
    return from_dict(TrainConfig, apply_overrides(load_with_base(name_or_path, _find), list(overrides)))

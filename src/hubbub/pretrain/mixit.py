"""MixIT pretraining (``hubbub pretrain mixit``): separation learnt from mixtures alone.

Each training example is a mixture of two mixtures of the stream (consecutive samples of the
loader's batch: a batch of ``2B`` mixtures makes ``B`` mixtures of mixtures); the separator
outputs ``M`` sources (``mixit.num_outputs``, default twice the most speakers per mixture), the
estimates are projected to add up to the input (``mixit.consistency``) and
:func:`hubbub.losses.mixit` scores the best remix into the two mixtures. Sources stored in the
shards are ignored for training; where the corpus has them, validation also reports how well the
outputs separate single mixtures (SI-SNRi of the best M-to-S assignment).

The input is a hubbub corpus (``data.shards``) or a folder of unlabelled recordings
(``mixit.recordings``: a local folder or a URL such as ``s3://bucket/meetings``), cut into
``mixit.segment_s`` segments once, into ``RUN/recordings`` (a corpus like any other: verified,
resumable, described by a data card).

How many speakers each mixture brings matters: on 2+2-speaker mixtures of mixtures MixIT barely
trains, and adding 1-speaker mixtures fixes it (Asteroid #528, #531). The knob is the corpus
recipe's speaker-count distribution: the ``mixit`` preset draws 1 or 2 speakers with equal
probability (``speakers.distribution``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from hubbub import storage
from hubbub.losses import mixit, mixture_consistency
from hubbub.shards.ingest import ingest_recordings
from hubbub.shards.reader import ShardDataset
from hubbub.train.build import build_separator, corpus_card
from hubbub.train.config import TrainConfig
from hubbub.train.solver import Solver, check_stage
from hubbub.train.validation import pit_si_snri

log = logging.getLogger(__name__)

# Outputs when the corpus does not say how many speakers a mixture has (recordings): 2 x 2.
DEFAULT_RECORDINGS_OUTPUTS = 4


class MixITModel(nn.Module):
    """A separator with M outputs and the mixture consistency projection used in training.

    ``consistency``: "none", "uniform" (residual shared equally) or "learned" (a softmax over the
    outputs predicted from the time-averaged backbone features decides who absorbs the residual).
    The trained separator (``self.separator``) is what the run saves; the projection is a training
    device (:func:`hubbub.losses.mixture_consistency` applies it at inference if wanted).
    """

    def __init__(self, separator: nn.Module, consistency: str = "uniform"):
        super().__init__()
        if consistency not in ("none", "uniform", "learned"):
            raise ValueError(f"consistency must be none, uniform or learned, got {consistency!r}")
        self.separator = separator
        self.consistency = consistency
        self.weights = (nn.Linear(separator.backbone.feature_dim, separator.num_sources)
                        if consistency == "learned" else None)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        feats = self.separator.backbone(mix)
        est = self.separator.head(feats)
        if self.consistency == "none":
            return est
        weights = None
        if self.weights is not None:
            weights = torch.softmax(self.weights(feats.frames.mean(-1)), dim=-1)
        return mixture_consistency(est, mix, weights)


def mixit_batch(mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch of 2B mixtures (2B, C, T) or (2B, T) -> (MoMs (B, T), mixtures (B, 2, T)).

    Consecutive samples are paired (reference mic only)."""
    if mix.dim() == 3:
        mix = mix[:, 0]
    if mix.shape[0] % 2:
        raise ValueError(f"MixIT pairs mixtures: the batch needs an even size, got {mix.shape[0]}")
    mixtures = mix.reshape(mix.shape[0] // 2, 2, mix.shape[-1])
    return mixtures.sum(1), mixtures


def default_num_outputs(card: dict) -> int:
    """Twice the most speakers a mixture of the corpus has (its recipe), 4 for recordings."""
    speakers = (card.get("recipe") or {}).get("speakers")
    if not speakers:
        return DEFAULT_RECORDINGS_OUTPUTS
    most = max((int(k) for k in speakers.get("distribution") or {}), default=int(speakers.get("count", 2)))
    return 2 * most


class MixITStage(Solver):
    def __init__(self, cfg: TrainConfig, out_dir):
        super().__init__(cfg, out_dir)
        self.card = corpus_card(cfg.data.shards)
        self.sample_rate_hz = self.card["recipe"]["sample_rate_hz"]
        self.num_outputs = cfg.mixit.num_outputs or default_num_outputs(self.card)
        self.labelled = bool(self.card["recipe"].get("targets")) and cfg.data.target in self.card["recipe"]["targets"]

    def build_model(self):
        return MixITModel(build_separator(self.cfg, self.num_outputs), self.cfg.mixit.consistency)

    def build_datasets(self):
        d = self.cfg.data
        # The loader's batch holds the two mixtures of each of the data.batch_size MoMs.
        train = ShardDataset(d.shards, d.train_split, targets=(), crop_s=d.crop_s, shuffle=True,
                             shuffle_buffer=d.shuffle_buffer, seed=self.cfg.seed, batch_size=2 * d.batch_size, mic=0)
        valid = None
        if d.valid_split in self.card["splits"]:
            targets = (d.target,) if self.labelled else ()
            valid = ShardDataset(d.shards, d.valid_split, targets=targets, crop_s=None, shuffle=False,
                                 rank=0, world_size=1, mic=0)
        return train, valid

    @property
    def valid_batch_size(self) -> int:
        return 2 * self.cfg.data.batch_size

    def run_step(self, model, batch, train: bool):
        """Consecutive mixtures paired into mixtures of mixtures, scored by the MixIT loss. In
        validation (whole samples) ``mixit_loss_db`` per pair (an odd batch's last mixture is
        left out) and, on a labelled corpus, ``si_snri_db``: the SI-SNRi of the best assignment of
        the M outputs to the true sources of each single mixture."""
        mix = batch["mix"][:, 0]
        paired = mix if train else mix[:len(mix) - len(mix) % 2]
        loss, values = None, {}
        if len(paired):
            mom, mixtures = mixit_batch(paired)
            est = model(mom)
            loss, _ = mixit(est, mixtures, tau=self.cfg.mixit.tau)
            if train:
                # How many outputs carry a source: energy within 30 dB of the input's.
                energy = est.detach().float().pow(2).sum(-1)
                active = (energy > 1e-3 * mom.detach().float().pow(2).sum(-1, keepdim=True)).float().sum(-1).mean()
                return loss.mean(), {"active_outputs": active}
            values["mixit_loss_db"] = loss
        if self.labelled:
            values["si_snri_db"] = pit_si_snri(model(mix), batch["sources"][self.cfg.data.target], mix,
                                               batch["source_mask"])
        return loss, values

    def final_model(self, model):
        return model.separator

    def data_card(self) -> dict:
        return {**self.card, "sample_rate_hz": self.sample_rate_hz, "unlabelled": True,
                "mixit": {"num_outputs": self.num_outputs, "consistency": self.cfg.mixit.consistency,
                          "tau": self.cfg.mixit.tau, "recordings": self.cfg.mixit.recordings or None}}


def prepare_recordings(cfg: TrainConfig, out_dir: str | Path) -> TrainConfig:
    """With ``mixit.recordings`` set (a local folder or URL), cut it into a corpus in
    ``out_dir/recordings`` (once: later runs and other processes reuse it) and point
    ``data.shards`` at it."""
    if not cfg.mixit.recordings:
        return cfg
    from accelerate import PartialState  # 0.3 s; the Solver loads it too, when the run starts

    target = storage.join(out_dir, "recordings")  # a run in an object store gets its corpus there
    splits = {cfg.data.train_split: 0.95, cfg.data.valid_split: 0.05}
    # The main process cuts the recordings; the others then find every shard complete.
    with PartialState().main_process_first():
        result = ingest_recordings(cfg.mixit.recordings, target, segment_s=cfg.mixit.segment_s,
                                   sample_rate_hz=cfg.mixit.sample_rate_hz, splits=splits, seed=cfg.seed)
    cfg.data.shards = str(result.out_dir)
    return cfg


def pretrain_mixit(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume) a MixIT run in ``out_dir``; returns the final validation metrics.

    Example::

        cfg = load_train_config("mixit_debug", ["data.shards=corpora/unlabelled"])
        pretrain_mixit(cfg, "runs/mixit")                 # RUN/model: the separator, M outputs
        # then: hubbub finetune pit --init runs/mixit --shards corpora/labelled --out runs/pit
    """
    check_stage(cfg, "mixit")
    cfg = prepare_recordings(cfg, out_dir)
    if not cfg.data.shards:
        raise ValueError("MixIT needs data.shards (a corpus, --shards) or mixit.recordings (a folder, --recordings)")
    return MixITStage(cfg, out_dir).run()

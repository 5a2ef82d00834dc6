"""Supervised permutation-invariant training (PIT) on simulated shards.

The model separates the mixture at the reference mic into ``model.num_sources`` estimates of the
chosen target (``data.target``: reverberant, early, direct or dry images); samples with fewer
speakers are padded with absent (all-zero) sources, which the loss handles (see
:class:`hubbub.losses.PITLoss`). ``init`` starts from the backbone of any pretrained run (MixIT,
codec tokens or PIT), its architecture included; its heads are dropped.

Semi-supervised (``semi.unlabelled``, Wisdom et al. 2020): every step also takes a batch of
unlabelled mixtures, pairs them into mixtures of mixtures and adds ``semi.weight`` times their
MixIT loss; the model then needs outputs for all the sources of a mixture of mixtures
(``model.num_sources`` >= twice the unlabelled corpus's most speakers), and the labelled
examples' surplus outputs are trained to silence by the PIT loss.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from hubbub.config import ConfigError
from hubbub.losses import PITLoss, mixit, mixture_consistency
from hubbub.pretrain.mixit import default_num_outputs, mixit_batch
from hubbub.shards.reader import PairedLoader, ShardDataset, ShardLoader
from hubbub.train.build import build_separator, corpus_card
from hubbub.train.config import TrainConfig
from hubbub.train.solver import Solver, check_stage
from hubbub.train.validation import pit_si_snri

log = logging.getLogger(__name__)


class PITStage(Solver):
    """Validation: the mean SI-SNR improvement of the first valid samples (``si_snri_db``), whole,
    under the best assignment of outputs to their speakers."""

    def __init__(self, cfg: TrainConfig, out_dir):
        super().__init__(cfg, out_dir)
        self.loss = PITLoss(kind=cfg.loss.kind, tau=cfg.loss.tau, zero_ref=cfg.loss.zero_ref)
        self.card = corpus_card(cfg.data.shards)  # read once; also fails early on a missing corpus
        self.sample_rate_hz = self.card["recipe"]["sample_rate_hz"]
        self.semi_card = None
        if cfg.semi.unlabelled:
            self.semi_card = self._check_semi()

    def _check_semi(self) -> dict:
        """The unlabelled corpus's card; its rate must match and the model must have outputs for
        every source of a mixture of two of its mixtures."""
        card = corpus_card(self.cfg.semi.unlabelled)
        if card["recipe"].get("sample_rate_hz") != self.sample_rate_hz:
            raise ConfigError("semi.unlabelled", f"{self.cfg.semi.unlabelled} is at "
                                                 f"{card['recipe'].get('sample_rate_hz')} Hz, the labelled corpus at "
                                                 f"{self.sample_rate_hz} Hz")
        if self.cfg.semi.split not in card["splits"]:
            raise ConfigError("semi.split", f"{self.cfg.semi.unlabelled} has no split {self.cfg.semi.split!r}")
        if self.cfg.mixit.consistency == "learned":
            raise ConfigError("mixit.consistency", "semi-supervised PIT supports none or uniform")
        needed = default_num_outputs(card)
        if self.cfg.model.num_sources < needed:
            raise ConfigError("model.num_sources", f"MixIT on {self.cfg.semi.unlabelled} needs {needed} outputs "
                                                   f"(twice its most speakers per mixture), got "
                                                   f"{self.cfg.model.num_sources}")
        return card

    def build_model(self):
        return build_separator(self.cfg, self.cfg.model.num_sources)

    def build_datasets(self):
        d, m = self.cfg.data, self.cfg.model
        train = ShardDataset(d.shards, d.train_split, targets=(d.target,), crop_s=d.crop_s, shuffle=True,
                             shuffle_buffer=d.shuffle_buffer, seed=self.cfg.seed, batch_size=d.batch_size,
                             max_sources=m.num_sources, mic=0)
        valid = ShardDataset(d.shards, d.valid_split, targets=(d.target,), crop_s=None, shuffle=False,
                             rank=0, world_size=1, max_sources=m.num_sources, mic=0)
        if self.semi_card is not None:
            s = self.cfg.semi
            # Two mixtures per mixture of mixtures; its own seed stream, so the two orders differ.
            self.unlabelled = ShardDataset(s.unlabelled, s.split, targets=(), crop_s=d.crop_s, shuffle=True,
                                           shuffle_buffer=d.shuffle_buffer, seed=self.cfg.seed + 1,
                                           batch_size=2 * (s.batch_size or d.batch_size), mic=0)
        return train, valid

    def build_loader(self, train_ds):
        loader = super().build_loader(train_ds)
        if self.semi_card is None:
            return loader
        acc = self.accelerator
        self.unlabelled.rank, self.unlabelled.world_size = acc.process_index, acc.num_processes
        return PairedLoader(loader, ShardLoader(self.unlabelled, num_workers=self.cfg.data.num_workers,
                                                persistent_workers=self.cfg.data.persistent_workers),
                            key="unlabelled")

    def run_step(self, model, batch, train: bool):
        mix = batch["mix"][:, 0]                                   # (B, T), the reference mic
        ref = batch["sources"][self.cfg.data.target]               # (B, S, T)
        if "unlabelled" not in batch:
            est = model(mix)
            loss, _ = self.loss(est, ref, source_mask=batch["source_mask"], mix=mix)
            return loss, {} if train else {"si_snri_db": pit_si_snri(est, ref, mix, batch["source_mask"])}
        # One forward over labelled mixtures and mixtures of mixtures together (equal crops): DDP
        # expects one forward per backward.
        mom, mixtures = mixit_batch(batch["unlabelled"]["mix"])
        est = model(torch.cat([mix, mom]))
        supervised, _ = self.loss(est[:len(mix)], ref, source_mask=batch["source_mask"], mix=mix)
        est_mom = est[len(mix):]
        if self.cfg.mixit.consistency == "uniform":
            est_mom = mixture_consistency(est_mom, mom)
        unsupervised = mixit(est_mom, mixtures, tau=self.cfg.mixit.tau)[0].mean()
        return supervised + self.cfg.semi.weight * unsupervised, {"pit_loss": supervised.detach(),
                                                                  "mixit_loss": unsupervised.detach()}

    def data_card(self) -> dict:
        card = {**self.card, "sample_rate_hz": self.sample_rate_hz}
        if self.semi_card is not None:
            card["unlabelled"] = {**self.semi_card, "split": self.cfg.semi.split, "weight": self.cfg.semi.weight}
        return card


def finetune_pit(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume) a PIT run in ``out_dir``; returns the final validation metrics."""
    check_stage(cfg, "pit")
    return PITStage(cfg, out_dir).run()

"""Supervised permutation-invariant training (PIT) on simulated shards.

The model separates the mixture at the reference mic into ``model.num_sources`` estimates of the
chosen target (``data.target``: reverberant, early, direct or dry images); samples with fewer
speakers are padded with absent (all-zero) sources, which the loss handles (see
:class:`hubbub.losses.PITLoss`). ``init`` starts from the backbone of any pretrained run.
"""
from __future__ import annotations

import logging
from pathlib import Path


from hubbub.shards.writer import load_index
from hubbub.train.config import TrainConfig
from hubbub.train.solver import Solver

log = logging.getLogger(__name__)


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory (its ``model/``), a checkpoint or a model directory -> the model dir."""
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").exists() and (candidate / "model.safetensors").exists():
            return candidate
    raise FileNotFoundError(f"{path} holds no model (config.json + model.safetensors), nor does {path}/model")


def corpus_card(shards: str | Path) -> dict:
    """The training corpus's data card: recipe, sources, licences, hours (from its index.json)."""
    index = load_index(shards)
    return {"corpus": str(Path(shards).resolve()), "recipe": index.get("recipe", {}),
            "splits": index.get("splits", {}), "sources": index.get("data_card", {}), "seed": index.get("seed")}


class PITStage(Solver):
    stage = "pit"

    def __init__(self, cfg: TrainConfig, out_dir):
        from hubbub.losses import PITLoss

        super().__init__(cfg, out_dir)
        self.loss = PITLoss(kind=cfg.loss.kind, tau=cfg.loss.tau, zero_ref=cfg.loss.zero_ref)
        self.card = corpus_card(cfg.data.shards)  # read once; also fails early on a missing corpus
        self.sample_rate_hz = self.card["recipe"]["sample_rate_hz"]

    def build_model(self):
        from hubbub.models import build_model, load_backbone, model_config

        m = self.cfg.model
        model = build_model(m.name, num_sources=m.num_sources, **{**model_config(m.name, m.size), **m.kwargs})
        if self.cfg.init:
            report = load_backbone(model, resolve_model_dir(self.cfg.init))
            log.info("backbone from %s: %d tensors loaded, %d ignored", self.cfg.init, len(report.loaded),
                     len(report.ignored))
        return model

    def build_datasets(self):
        from hubbub.shards.reader import ShardDataset

        d, m = self.cfg.data, self.cfg.model
        train = ShardDataset(d.shards, d.train_split, targets=(d.target,), crop_s=d.crop_s, shuffle=True,
                             shuffle_buffer=d.shuffle_buffer, seed=self.cfg.seed, batch_size=d.batch_size,
                             max_sources=m.num_sources, mic=0)
        valid = ShardDataset(d.shards, d.valid_split, targets=(d.target,), crop_s=None, shuffle=False,
                             rank=0, world_size=1, max_sources=m.num_sources, mic=0)
        self.valid = valid
        return train, valid

    def train_step(self, model, batch):
        mix = batch["mix"][:, 0]                                   # (B, T), the reference mic
        ref = batch["sources"][self.cfg.data.target]               # (B, S, T)
        est = model(mix)
        loss, _ = self.loss(est, ref, source_mask=batch["source_mask"], mix=mix)
        return loss, {}

    def evaluate(self, model) -> dict[str, float]:
        """Mean SI-SNR improvement over the unprocessed mixture on the first valid samples."""
        from hubbub.losses import pit, reorder, si_snr

        device = next(model.parameters()).device
        gains = []
        for i, item in enumerate(self.valid):
            if i >= self.cfg.data.valid_max_samples:
                break
            n = item["num_sources"]
            mix = item["mix"][0][None].to(device)
            ref = item["sources"][self.cfg.data.target][:n][None].to(device)
            est = model(mix)
            _, perm = pit(lambda e, r: -si_snr(e, r), est, ref)
            best = reorder(est, perm)
            gain = si_snr(best, ref) - si_snr(mix[:, None].expand_as(ref), ref)
            gains.append(gain.mean().item())
        return {"si_snri_db": float(sum(gains) / len(gains))} if gains else {}

    def data_card(self) -> dict:
        return {**self.card, "sample_rate_hz": self.sample_rate_hz}


def finetune_pit(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume) a PIT run in ``out_dir``; returns the final validation metrics."""
    return PITStage(cfg, out_dir).run()

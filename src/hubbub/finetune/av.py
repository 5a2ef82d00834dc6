"""Audio-visual target-speaker extraction: the mixture and one speaker's lips -> that speaker.

Trained on a corpus simulated with lip streams (a recipe whose targets include ``"lips"``, e.g.
the ``av`` preset): every source of a training mixture with a lip stream is a target in turn, so
a batch of B mixtures of S speakers is B * S extraction examples, each the mixture at the
reference mic, the source's 88x88 lip frames (random crop in training, centre crop in
evaluation) and the source's ``data.target`` image as reference. The loss is the PIT stage's
(``loss.kind``, SI-SNR by default) on that one source, a crop in which the target is silent
scored by its energy relative to the mixture, plus ``av.vq_weight`` times the lip-token
quantiser's loss and ``av.recon_weight`` times the lip-frame reconstruction loss.

``init`` starts the audio path from a pretrained GLA U-Net backbone (``hubbub pretrain mixit`` or
``codec`` or ``finetune pit`` with ``model.name=glaunet``), whose architecture it takes; the video
encoder and the fusion come from ``model`` (``size`` and ``kwargs``). An AV run as ``init`` gives
the whole extractor but its head.

Validation reports SI-SNRi with each target's own lips and with the lips of another utterance
(the first source of the next evaluated mixture, :func:`hubbub.train.validation.with_mismatched_lips`,
as ``hubbub evaluate`` does): the gap is what the video contributes.
"""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from hubbub.config import ConfigError
from hubbub.losses import PITLoss, si_snr
from hubbub.models.av import AVExtractor
from hubbub.models.io import WEIGHTS_NAME, read_config
from hubbub.shards.reader import ShardDataset
from hubbub.train.build import build_separator, corpus_card, resolve_model_dir
from hubbub.train.config import TrainConfig
from hubbub.train.solver import Solver, check_stage
from hubbub.train.validation import with_mismatched_lips

LIPS = "lips"
# The extra member a valid item carries: another utterance's lips (F, 88, 88), see valid_items.
MISMATCHED = "mismatched_lips"


class AVStage(Solver):
    def __init__(self, cfg: TrainConfig, out_dir):
        super().__init__(cfg, out_dir)
        if cfg.model.name != "avextractor":
            raise ConfigError("model.name", f"the AV stage trains 'avextractor', got {cfg.model.name!r}")
        self.loss = PITLoss(kind=cfg.loss.kind, tau=cfg.loss.tau, zero_ref=cfg.loss.zero_ref)
        self.card = corpus_card(cfg.data.shards)
        self.sample_rate_hz = self.card["recipe"]["sample_rate_hz"]
        targets = self.card["recipe"].get("targets", [])
        if LIPS not in targets:
            raise ConfigError("data.shards", f"{cfg.data.shards} has no lip streams (its recipe's targets are "
                                             f"{targets}); simulate one with lips, e.g. `hubbub simulate --recipe av`")
        if cfg.data.target not in targets:
            raise ConfigError("data.target", f"{cfg.data.shards} does not store {cfg.data.target!r} sources "
                                             f"(targets {targets})")

    def build_model(self):
        model = build_separator(self.cfg, 1)
        if not isinstance(model, AVExtractor):
            raise ConfigError("init", f"{self.cfg.init} holds a {model.spec['name']} model: the AV extractor's audio "
                                      "path is a GLA U-Net, so pretrain with model.name=glaunet (or start from scratch)")
        if self.cfg.init:
            self._load_video(model)
        return model

    def _load_video(self, model) -> None:
        """From an AV run as init, also its video encoder and fusion (build_separator loads only the
        audio backbone)."""
        source = resolve_model_dir(self.cfg.init)
        if read_config(source)["name"] != "avextractor":
            return
        state = load_file(str(source / WEIGHTS_NAME))
        for part in ("video", "fusion"):
            prefix = part + "."
            getattr(model, part).load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                  if k.startswith(prefix)})

    def build_datasets(self):
        d = self.cfg.data
        train = ShardDataset(d.shards, d.train_split, targets=(d.target, LIPS), crop_s=d.crop_s, shuffle=True,
                             shuffle_buffer=d.shuffle_buffer, seed=self.cfg.seed, batch_size=d.batch_size, mic=0,
                             roi_crop="random")
        valid = ShardDataset(d.shards, d.valid_split, targets=(d.target, LIPS), crop_s=None, shuffle=False,
                             rank=0, world_size=1, mic=0, roi_crop="center")
        return train, valid

    def valid_items(self, dataset):
        """Each valid item with another utterance's lips among its extras (collated with the batch)."""
        for item, other in with_mismatched_lips(super().valid_items(dataset), LIPS):
            if other is not None:
                item["extras"][MISMATCHED] = other
            yield item

    def run_step(self, model, batch, train: bool):
        """Every real source of the batch's mixtures, in turn, extracted with its own lips; in
        validation also with another utterance's (``si_snri_db``, ``si_snri_mismatched_db``:
        per source, the SI-SNR improvement over the mixture)."""
        mix = batch["mix"][:, 0]                                       # (B, T), the reference mic
        ref = batch["sources"][self.cfg.data.target]                   # (B, S, T)
        lips = batch["sources"][LIPS]                                  # (B, S, F, 88, 88) uint8
        b, s = batch["source_mask"].nonzero(as_tuple=True)             # every real source, in turn
        mix, ref = mix[b], ref[b, s]
        est, aux = model(mix, lips[b, s])                              # (N, 1, T)
        extraction, _ = self.loss(est, ref[:, None], mix=mix)
        weights = {"vq": self.cfg.av.vq_weight, "recon": self.cfg.av.recon_weight}
        loss = extraction + sum(weights[k] * v for k, v in aux.items())
        if train:
            return loss, {"extraction_loss": extraction.detach(), **{f"{k}_loss": v.detach() for k, v in aux.items()}}
        base = si_snr(mix, ref)
        values = {"si_snri_db": si_snr(est[:, 0], ref) - base}
        if MISMATCHED in batch["extras"]:
            other = model(mix, batch["extras"][MISMATCHED][b]).estimates
            values["si_snri_mismatched_db"] = si_snr(other[:, 0], ref) - base
        return loss, values

    def data_card(self) -> dict:
        return {**self.card, "sample_rate_hz": self.sample_rate_hz}


def finetune_av(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume) an AV target-speaker extraction run in ``out_dir``; returns the final
    validation metrics (``si_snri_db``, ``si_snri_mismatched_db``)."""
    check_stage(cfg, "av")
    return AVStage(cfg, out_dir).run()

"""Codec-token pretraining (``hubbub pretrain codec``): the backbone learns to predict EnCodec tokens.

EnCodec (Défossez et al. 2022; 24 kHz, 75 token frames per second, codebooks of 1024) turns
audio into discrete tokens, one per codebook per frame (:mod:`hubbub.codec`). A token head on the
separator backbone (:class:`CodecTokenHead`: backbone frames averaged to the token rate, then one
linear classifier per stream and codebook) predicts them, in one of two tasks:

* ``codec.task: masked`` (no labels, HuBERT-style): spans of the input waveform are zeroed
  (a token frame starts a span of ``mask_span`` frames with probability ``mask_prob``) and the
  backbone predicts the tokens of the *unmasked* mixture at the masked frames.
* ``codec.task: sources`` (labelled corpora): one token stream per output, the tokens of each
  source's ``source_target`` image, scored under the best assignment of outputs to sources (PIT
  over the token cross-entropy), so the backbone learns to tell the speakers apart.

In both, codebook q's cross-entropy is weighted ``codebook_decay**q`` (normalised): the coarse
codebooks, which carry most of the content, count most. Tokens come from the shards when the
corpus was tokenised with the same codec (``hubbub shards tokens``), otherwise the codec runs on
every batch. Tokens are a pretraining target only: the run saves the backbone with its token
head (``"contents": "backbone"``), and ``hubbub finetune pit --init RUN`` drops the head.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hubbub.codec import load_codec, token_span
from hubbub.config import ConfigError
from hubbub.losses import pit_from_matrix
from hubbub.models.io import BACKBONE
from hubbub.shards.reader import ShardDataset
from hubbub.shards.writer import load_index
from hubbub.train.build import build_separator, corpus_card
from hubbub.train.config import TrainConfig
from hubbub.train.solver import Solver, check_stage

log = logging.getLogger(__name__)


class CodecTokenHead(nn.Module):
    """Backbone frames (B, D, L) -> token logits (B, S, Q, K, L_tok) for S streams, Q codebooks of K.

    The frames are averaged over each token frame's span (adaptive average pooling to ``L_tok``
    frames; backbone frames are much denser than 75 Hz), normalised, and classified per codebook.
    """

    def __init__(self, feature_dim: int, num_streams: int, num_codebooks: int, codebook_size: int):
        super().__init__()
        self.num_streams, self.num_codebooks, self.codebook_size = num_streams, num_codebooks, codebook_size
        self.norm = nn.GroupNorm(1, feature_dim)
        self.proj = nn.Conv1d(feature_dim, num_streams * num_codebooks * codebook_size, 1)

    def forward(self, frames: torch.Tensor, num_token_frames: int) -> torch.Tensor:
        pooled = F.adaptive_avg_pool1d(frames, num_token_frames)
        logits = self.proj(self.norm(pooled))
        return logits.unflatten(1, (self.num_streams, self.num_codebooks, self.codebook_size))


class TokenModel(nn.Module):
    """A separator backbone under a codec-token head; saved as a backbone checkpoint.

    ``spec`` is the separator's (so :func:`hubbub.models.load_backbone` and ``--init`` rebuild the
    same architecture); ``checkpoint_contents = "backbone"`` makes :func:`hubbub.models.load_model`
    refuse it as a separator.
    """

    checkpoint_contents = BACKBONE

    def __init__(self, backbone: nn.Module, head: CodecTokenHead, spec: dict, heads_info: dict):
        super().__init__()
        self.backbone = backbone
        self.token_head = head
        self.spec = spec
        self.checkpoint_heads = heads_info

    def forward(self, mix: torch.Tensor, num_token_frames: int) -> torch.Tensor:
        return self.token_head(self.backbone(mix).frames, num_token_frames)


def codebook_weights(num_codebooks: int, decay: float) -> torch.Tensor:
    """(Q,) weights ``decay**q`` normalised to sum to 1."""
    w = decay ** torch.arange(num_codebooks, dtype=torch.float32)
    return w / w.sum()


def span_mask(batch: int, length: int, prob: float, span: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) bool HuBERT-style span mask: each frame starts a masked span of ``span`` frames with
    probability ``prob``; every row gets at least one span."""
    starts = torch.rand(batch, length, generator=generator) < prob
    empty = ~starts.any(-1)
    if empty.any():
        first = torch.randint(0, max(1, length - span + 1), (batch,), generator=generator)
        starts[empty, first[empty]] = True
    # A frame is masked when a span started at most span-1 frames before it.
    kernel = torch.ones(1, 1, span)
    covered = F.conv1d(F.pad(starts.float()[:, None], (span - 1, 0)), kernel)[:, 0]
    return covered > 0


def mask_waveform(wave: torch.Tensor, mask: torch.Tensor, sample_rate_hz: int, frame_rate_hz: float) -> torch.Tensor:
    """Zero the samples of ``wave`` (B, T) under masked token frames (``mask`` (B, L)); frame l
    covers input samples ``[l * sr / fr, (l + 1) * sr / fr)``."""
    t = torch.arange(wave.shape[-1], device=wave.device)
    frame = torch.clamp((t * frame_rate_hz / sample_rate_hz).long(), max=mask.shape[-1] - 1)
    return wave * (~mask.to(wave.device)[:, frame]).to(wave.dtype)


def token_nll(logits: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Codebook-weighted cross-entropy per frame: logits (..., Q, K, L), tokens (..., Q, L) -> (..., L)."""
    logp = torch.log_softmax(logits.float(), dim=-2)
    nll = -logp.gather(-2, tokens.long().unsqueeze(-2)).squeeze(-2)                # (..., Q, L)
    return (nll * weights.to(nll.device)[:, None]).sum(-2)


class CodecStage(Solver):
    def __init__(self, cfg: TrainConfig, out_dir):
        super().__init__(cfg, out_dir)
        if not cfg.codec.model:
            raise ConfigError("codec.model", "name an EnCodec model: a local directory or a hub id "
                                             "(facebook/encodec_24khz)")
        self.card = corpus_card(cfg.data.shards)
        self.sample_rate_hz = self.card["recipe"]["sample_rate_hz"]
        self.codec = load_codec(cfg.codec.model, bandwidth_kbps=cfg.codec.bandwidth_kbps)
        self.weights = codebook_weights(self.codec.num_codebooks, cfg.codec.codebook_decay)
        self.cached = self._use_cache()
        self.task = cfg.codec.task
        if self.task == "sources":
            recipe = self.card["recipe"]
            targets = recipe.get("targets", [cfg.codec.source_target])     # a recipe that does not say: try
            if recipe.get("kind") == "recordings" or (not self.cached and cfg.codec.source_target not in targets):
                raise ConfigError("codec.task", f"'sources' needs a labelled corpus storing the "
                                                f"{cfg.codec.source_target!r} target; {cfg.data.shards} stores "
                                                f"{targets if recipe.get('kind') != 'recordings' else 'no sources'} "
                                                "(use task=masked)")
            self.num_streams = cfg.model.num_sources
        else:
            self.num_streams = 1

    def _use_cache(self) -> bool:
        stored = load_index(self.cfg.data.shards).get("codec")
        def identity(info: dict) -> dict:   # the same model at another path is the same codec
            return {k: v for k, v in info.items() if k not in ("name", "source_target")}

        same = bool(stored) and identity(stored) == identity(self.codec.info())
        if self.cfg.codec.task == "sources" and same and stored.get("source_target") != self.cfg.codec.source_target:
            same = False
        if self.cfg.codec.cached == "require" and not same:
            raise ConfigError("codec.cached", f"{self.cfg.data.shards} holds no tokens of this codec "
                                              "(run `hubbub shards tokens` first, or set codec.cached=auto)")
        use = same and self.cfg.codec.cached != "never"
        log.info("codec tokens: %s", "read from the shards" if use else "computed on the fly")
        return use

    def build_model(self):
        self.codec.to(self.accelerator.device)   # targets are computed where the batches are
        separator = build_separator(self.cfg, self.cfg.model.num_sources)
        head = CodecTokenHead(separator.backbone.feature_dim, self.num_streams, self.codec.num_codebooks,
                              self.codec.codebook_size)
        info = {"kind": "codec-tokens", "task": self.task, "codec": self.codec.info(), "streams": self.num_streams}
        return TokenModel(separator.backbone, head, separator.spec, info)

    def build_datasets(self):
        d = self.cfg.data
        kwargs = self._reader_kwargs()
        train = ShardDataset(d.shards, d.train_split, crop_s=d.crop_s, shuffle=True, shuffle_buffer=d.shuffle_buffer,
                             seed=self.cfg.seed, batch_size=d.batch_size, mic=0, **kwargs)
        valid = None
        if d.valid_split in self.card["splits"]:
            valid = ShardDataset(d.shards, d.valid_split, crop_s=d.crop_s, shuffle=False, seed=self.cfg.seed,
                                 rank=0, world_size=1, mic=0, **kwargs)
        return train, valid

    def _reader_kwargs(self) -> dict:
        if self.task == "masked":
            return {"targets": (), "extras": ("mix.codec.npy",) if self.cached else ()}
        return {"targets": ("codec",) if self.cached else (self.cfg.codec.source_target,),
                "max_sources": self.num_streams}

    # -- tokens ------------------------------------------------------------------------------------
    def _crop_tokens(self, tokens: torch.Tensor, start_sample: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Cached whole-sample tokens (B, ..., Q, L_full) -> the crop's frames (B, ..., Q, L)."""
        length = self.codec.num_frames(num_samples, self.sample_rate_hz)
        out = tokens.new_zeros((*tokens.shape[:-1], length))
        for b in range(tokens.shape[0]):
            first, count = token_span(int(start_sample[b]), num_samples, self.sample_rate_hz, self.codec.frame_rate_hz,
                                      total_frames=tokens.shape[-1])
            out[b, ..., :count] = tokens[b, ..., first:first + count]
        return out

    def targets(self, batch: dict, mix: torch.Tensor) -> torch.Tensor:
        """Token targets: (B, 1, Q, L) for the masked task, (B, S, Q, L) for sources."""
        device = mix.device
        if self.task == "masked":
            if self.cached:
                tokens = self._crop_tokens(batch["extras"]["mix.codec.npy"], batch["start_sample"], mix.shape[-1])
            else:
                tokens = self.codec.encode(mix, self.sample_rate_hz)
            return tokens[:, None].to(device)
        if self.cached:
            return self._crop_tokens(batch["sources"]["codec"], batch["start_sample"], mix.shape[-1]).to(device)
        refs = batch["sources"][self.cfg.codec.source_target].to(device)                          # (B, S, T)
        tokens = self.codec.encode(refs.flatten(0, 1), self.sample_rate_hz)
        return tokens.unflatten(0, refs.shape[:2])

    def run_step(self, model, batch, train: bool):
        """Token cross-entropy (codebook-weighted) at the masked frames or of the sources under
        the best assignment, and codebook 0's accuracy; validation reports them as ``token_nll``
        and ``accuracy_q0`` on fixed crops of the first valid samples, its masks drawn afresh from
        the seed at every evaluation (the Solver seeds validation)."""
        loss, logs = self._loss(model, batch)
        return loss, logs if train else {"token_nll": loss, "accuracy_q0": logs["accuracy_q0"]}

    def _loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        mix = batch["mix"][:, 0]
        tokens = self.targets(batch, mix)
        num_frames = tokens.shape[-1]
        if self.task == "masked":
            mask = span_mask(mix.shape[0], num_frames, self.cfg.codec.mask_prob, self.cfg.codec.mask_span
                             ).to(mix.device)
            logits = model(mask_waveform(mix, mask, self.sample_rate_hz, self.codec.frame_rate_hz), num_frames)
            nll = token_nll(logits[:, 0], tokens[:, 0], self.weights)                          # (B, L)
            loss = (nll * mask).sum() / mask.sum()
            correct = (logits[:, 0, 0].argmax(-2) == tokens[:, 0, 0]).float()
            return loss, {"accuracy_q0": (correct * mask).sum() / mask.sum(), "masked_fraction": mask.float().mean()}
        logits = model(mix, num_frames)                                                        # (B, S, Q, K, L)
        cost = torch.stack([token_nll(logits, tokens[:, j:j + 1].expand(-1, logits.shape[1], -1, -1),
                                      self.weights).mean(-1) for j in range(tokens.shape[1])], -1)   # (B, S, S)
        loss, perm = pit_from_matrix(cost, mask=batch["source_mask"].to(mix.device))
        picked = logits[torch.arange(mix.shape[0], device=mix.device)[:, None], perm]         # (B, S, Q, K, L)
        correct = (picked[:, :, 0].argmax(-2) == tokens[:, :, 0]).float().mean(-1)              # (B, S)
        present = batch["source_mask"].to(mix.device).float()
        return loss.mean(), {"accuracy_q0": (correct * present).sum() / present.sum()}

    def data_card(self) -> dict:
        return {**self.card, "sample_rate_hz": self.sample_rate_hz, "codec": self.codec.info(),
                "codec_task": self.task, "tokens_cached": self.cached}


def pretrain_codec(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume) a codec-token run in ``out_dir``; returns the final validation metrics.

    Example::

        cfg = load_train_config("codec_debug", ["data.shards=corpora/unlabelled",
                                                "codec.model=/models/encodec_24khz"])
        pretrain_codec(cfg, "runs/codec")
        # then: hubbub finetune pit --init runs/codec --shards corpora/labelled --out runs/pit
    """
    check_stage(cfg, "codec")
    if not cfg.data.shards:
        raise ValueError("codec pretraining needs data.shards (a corpus, --shards)")
    return CodecStage(cfg, out_dir).run()

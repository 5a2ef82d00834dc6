"""What every stage builds the same way: the separator (fresh, or on a pretrained backbone), the
corpus's data card, and where a pretrained model lives."""
from __future__ import annotations

import logging
from pathlib import Path

from hubbub import rundir, storage
from hubbub.config import ConfigError
from hubbub.models import build_model, load_backbone, model_config
from hubbub.models.factory import BACKBONE_OF
from hubbub.models.io import hub_snapshot, read_config
from hubbub.shards.writer import load_index
from hubbub.train.config import TrainConfig

log = logging.getLogger(__name__)


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory (its ``model/``), a checkpoint, a model or published directory, or a
    Hugging Face Hub id (downloaded: config.json and model.safetensors only) -> the model dir.
    A run or model directory in an object store (``s3://...``) is fetched into a local mirror."""
    if rundir.is_remote(path):
        path = rundir.fetch_run(path)
    path = Path(path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").exists() and (candidate / "model.safetensors").exists():
            return candidate
    if path.exists():
        raise FileNotFoundError(f"{path} holds no model (config.json + model.safetensors), nor does {path}/model")
    return hub_snapshot(str(path), ["config.json", "model.safetensors", "*.md", "*.json"])


def corpus_card(shards: str | Path) -> dict:
    """The training corpus's data card: recipe, sources, licences, hours (from its index.json)."""
    index = load_index(shards)
    return {"corpus": storage.normalize(shards), "recipe": index.get("recipe", {}),
            "splits": index.get("splits", {}), "sources": index.get("data_card", {}), "seed": index.get("seed")}


def build_separator(cfg: TrainConfig, num_sources: int):
    """The stage's separator with ``num_sources`` outputs.

    Without ``cfg.init`` the architecture is ``cfg.model`` (name, size, kwargs). With ``cfg.init``
    (a run, model directory or hub id of any stage, pretraining or finetuning) the architecture is
    the pretrained one, read from its config.json, and its backbone weights are loaded; the head
    is new, for ``num_sources`` outputs, and the pretrained run's heads (separation, MixIT or
    codec-token heads) are dropped. A model built around another model's backbone
    (:data:`hubbub.models.factory.BACKBONE_OF`: ``avextractor`` on a ``glaunet``) takes the
    pretrained backbone's kwargs and the rest (video encoder, fusion) from ``cfg.model``.
    """
    m = cfg.model
    own = {**model_config(m.name, m.size), **m.kwargs}
    if not cfg.init:
        try:
            return build_model(m.name, num_sources=num_sources, **own)
        except TypeError as exc:  # a mistyped or foreign model.kwargs key
            raise ConfigError("model.kwargs", str(exc)) from None
    source = resolve_model_dir(cfg.init)
    pretrained = read_config(source)
    kwargs = {k: v for k, v in pretrained["kwargs"].items() if k != "num_sources"}
    name = pretrained["name"]
    if BACKBONE_OF.get(m.name) == name:
        name, kwargs = m.name, {**own, **kwargs}
    elif name in BACKBONE_OF and BACKBONE_OF.get(m.name) != BACKBONE_OF[name]:
        # An AV extractor's audio path, finetuned as a plain separator of its backbone's model.
        name = BACKBONE_OF[name]
        kwargs = {k: v for k, v in kwargs.items() if k in model_config(name, "paper")}
    elif name != m.name:
        log.info("init %s is a %s model: using its architecture, not model.name=%s", cfg.init, name, m.name)
    model = build_model(name, num_sources=num_sources, **kwargs)
    report = load_backbone(model, source)
    log.info("backbone from %s: %d tensors loaded, %d ignored (heads dropped)", source, len(report.loaded),
             len(report.ignored))
    return model

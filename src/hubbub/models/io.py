"""Checkpoints of separators: ``config.json`` (registered name + kwargs) and ``model.safetensors``.

A checkpoint directory holds::

    config.json         {"name": "convtasnet", "kwargs": {"num_sources": 2, ...}, "hubbub_version": "0.1.0",
                         "contents": "separator"}
    model.safetensors   the state dict (keys "backbone.*" and "head.*")

A pretraining stage that trains the backbone under other heads (codec-token classifiers) saves
``"contents": "backbone"`` with its heads' description under ``"heads"``: :func:`load_backbone`
reads such a checkpoint (the heads are dropped), :func:`load_model` refuses it with a message
that says how to finetune it.

Loading rebuilds the model from the registered name and kwargs, so moving or renaming a class
never breaks a checkpoint, and reads tensors with safetensors (never pickle, so loading a
checkpoint cannot run code).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save

from hubbub import storage
from hubbub.models.base import Separator
from hubbub.models.factory import BACKBONE_OF, MODELS, build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_BACKBONE = "backbone."
# What a checkpoint holds: a whole separator (backbone + separation head), or a pretrained backbone
# with pretraining heads (codec-token classifiers) that finetuning drops.
SEPARATOR, BACKBONE = "separator", "backbone"


def _hubbub_version() -> str:
    try:
        return version("hubbub")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def save_model(model: Separator, directory: str | Path) -> Path:
    """Write ``model`` to ``directory`` (created if needed) as config.json + model.safetensors.

    Each file is written under a temporary name and renamed, so a crash never leaves a truncated
    checkpoint under the final name. Returns the directory.

    Raises:
        ValueError: ``model.spec`` is None (a hand-assembled model has no registered name to
            rebuild it from; build it with :func:`hubbub.models.build_model`).

    Example::

        save_model(model, "runs/pretrain/final")
        model = load_model("runs/pretrain/final")
    """
    if model.spec is None:
        raise ValueError("model has no spec (name + kwargs); build it with hubbub.models.build_model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"name": model.spec["name"], "kwargs": model.spec["kwargs"], "hubbub_version": _hubbub_version(),
              "contents": getattr(model, "checkpoint_contents", SEPARATOR)}
    if getattr(model, "checkpoint_heads", None):
        config["heads"] = model.checkpoint_heads
    save_weights(model, directory, metadata={"name": config["name"]})
    storage.write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return directory


def save_weights(module: torch.nn.Module, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module``'s state dict to ``directory/model.safetensors`` atomically (any module:
    :func:`save_model` adds the config.json that makes it loadable by name)."""
    # safetensors refuses non-contiguous and shared-storage tensors; clone() gives each its own.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    path = Path(directory) / WEIGHTS_NAME
    # Serialised in memory and written by Python, so a full disk is an OSError naming the file
    # (safetensors' own writer reports it as an error of its own) and the temporary is removed.
    storage.write_bytes(path, save(state, metadata=metadata))
    return path


def hub_snapshot(source: str, patterns: list[str], revision: str | None = None) -> Path:
    """The local folder of Hugging Face Hub repo ``source`` (only files matching ``patterns``).

    ``source`` is taken for a Hub id only if it cannot be a local path: something that exists, is
    absolute, starts with ``.`` or ``~``, has more than one ``/``, or whose first part is a local
    folder (``runs/mixit`` beside ``runs/``) is a mistyped path, reported as one, never looked up
    on the Hub. A Hub that cannot give the repo (none of that id, no network) is one line too.

    Raises:
        FileNotFoundError: no such local directory, or the Hub gave nothing.
    """
    path = Path(source)
    first = source.split("/")[0]
    if (path.exists() or path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
            or (source.count("/") == 1 and Path(first).is_dir())):
        raise FileNotFoundError(f"{source}: no such model directory" if not path.exists()
                                else f"{source}: not a model directory (no {CONFIG_NAME} + {WEIGHTS_NAME})")
    # Here, not at the top: 0.2 s on top of torch, for every importer of the models; only a hub id needs it.
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated, HTTP: many types, one answer
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"{source}: not a local directory, and the Hugging Face Hub did not give it "
                                f"({type(exc).__name__}: {reason})") from None


def read_config(directory: str | Path) -> dict:
    """The checkpoint's config.json, checked: ``name`` must be registered."""
    path = Path(directory) / CONFIG_NAME
    config = json.loads(path.read_text())
    name = config.get("name")
    if name not in MODELS:
        raise ValueError(f"{path}: unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return config


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> Separator:
    """Rebuild a separator saved by :func:`save_model` and load its weights (strictly).

    Args:
        directory: the checkpoint directory.
        map_location: device the tensors are loaded to; the model is moved there too.

    Raises:
        ValueError: config.json names a model that is not registered.
        RuntimeError: the weights do not match the rebuilt model.
    """
    directory = Path(directory)
    config = read_config(directory)
    if config.get("contents", SEPARATOR) != SEPARATOR:
        raise ValueError(f"{directory} holds a pretrained {config['name']} backbone without a separation head "
                         f"(pretraining heads: {config.get('heads', 'unknown')}); finetune it first, e.g. "
                         f"`hubbub finetune pit --init {directory}`")
    model = build_model(config["name"], **config["kwargs"])
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(map_location)))
    return model.to(map_location)


@dataclass
class LoadReport:
    """Result of :func:`load_backbone`, as full state-dict keys (``backbone.encoder.conv.weight``).

    Attributes:
        loaded: the model's backbone tensors that were copied from the source.
        ignored: the source's tensors that were not (its head, anything outside ``backbone.*``,
            and with ``strict=False`` backbone keys the model does not have).
        missing: the model's backbone tensors the source lacked, left as initialised (only
            possible with ``strict=False``).
    """

    loaded: list[str]
    ignored: list[str]
    missing: list[str]


def backbone_compatible(source_name: str, model_name: str) -> bool:
    """Whether a ``source_name`` checkpoint's backbone can load into a ``model_name`` model."""
    return source_name == model_name or BACKBONE_OF.get(model_name) == source_name or \
        BACKBONE_OF.get(source_name) == model_name


def load_backbone(model: Separator, source: Mapping[str, torch.Tensor] | str | Path,
                  strict: bool = True) -> LoadReport:
    """Load only the backbone of a pretrained separator into ``model``, whatever its head.

    This is how finetuning starts from a pretrained checkpoint with a different number of sources
    or a different head: ``backbone.*`` tensors are copied, ``head.*`` is left as initialised.

    Args:
        model: the separator to load into (any head; its backbone must have the same architecture).
        source: a checkpoint directory (from :func:`save_model`) or a separator state dict with
            ``backbone.*`` keys.
        strict: if True, the source's backbone keys must match ``model.backbone``'s exactly (a
            missing or unexpected key raises); shapes must match either way.

    Returns:
        a :class:`LoadReport`: the ``backbone.*`` keys loaded, the source keys ignored, the
        backbone keys missing from the source.

    A model whose backbone is another model's (:data:`hubbub.models.factory.BACKBONE_OF`: the AV
    extractor's audio path is a GLA U-Net backbone) loads that model's checkpoints too.

    Raises:
        ValueError: the checkpoint directory holds a registered model whose backbone differs.
        RuntimeError: key or shape mismatch.

    Example::

        model = build_model("convtasnet", num_sources=3, **model_config("convtasnet", "paper"))
        report = load_backbone(model, "runs/pretrain/final")   # pretrained with 2 sources
    """
    if isinstance(source, (str, Path)):
        config = read_config(source)
        if model.spec is not None and not backbone_compatible(config["name"], model.spec["name"]):
            raise ValueError(f"{source} holds a {config['name']!r} model, whose backbone does not fit a "
                             f"{model.spec['name']!r} model")
        source = load_file(str(Path(source) / WEIGHTS_NAME))
    backbone_state = {k[len(_BACKBONE):]: v for k, v in source.items() if k.startswith(_BACKBONE)}
    result = model.backbone.load_state_dict(backbone_state, strict=strict)
    unexpected = set(result.unexpected_keys)
    loaded = sorted(_BACKBONE + k for k in backbone_state if k not in unexpected)
    ignored = sorted(k for k in source if not k.startswith(_BACKBONE) or k[len(_BACKBONE):] in unexpected)
    missing = sorted(_BACKBONE + k for k in result.missing_keys)
    return LoadReport(loaded=loaded, ignored=ignored, missing=missing)

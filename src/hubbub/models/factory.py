"""Model registry: a plain dict from name to builder, plus each model's paper and debug configs."""
from __future__ import annotations

import inspect
from typing import Callable

from hubbub.models.av import AV_CONFIGS, avextractor
from hubbub.models.base import Separator
from hubbub.models.convtasnet import convtasnet
from hubbub.models.dprnn import dprnn
from hubbub.models.glaunet import glaunet
from hubbub.models.tfgridnet import tfgridnet

MODELS: dict[str, Callable[..., Separator]] = {
    "convtasnet": convtasnet,
    "dprnn": dprnn,
    "tfgridnet": tfgridnet,
    "glaunet": glaunet,
    "avextractor": avextractor,   # target-speaker extraction from the mix and the target's lips
}

# Models that take the target speaker's video with the mixture (``model(mix, video)``) and return
# that one speaker; every other model is a separator, ``model(mix) -> (B, S, T)``.
AUDIO_VISUAL: frozenset[str] = frozenset({"avextractor"})

# Models whose backbone is another registered model's: a pretrained backbone of the key's value
# loads into the key's model (the audio path of the AV extractor is a GLA U-Net backbone).
BACKBONE_OF: dict[str, str] = {"avextractor": "glaunet"}

# Paper configs repeat the builders' defaults on purpose: a config (and so a checkpoint) must not
# change meaning if a default is changed later. Debug configs run a 1 s, 8 kHz batch of 2 in well
# under a second on one CPU core and have < 100k parameters. Small configs are sized for training
# on a CPU: a PIT step on a batch of 4 x 2 s at 8 kHz in well under a second on 2 cores (measured
# by benchmarks/small_models.py; Conv-TasNet's is the one pit_small trains, README "On a CPU").
CONFIGS: dict[str, dict[str, dict]] = {
    "convtasnet": {
        "paper": dict(num_filters=512, kernel_size=16, bottleneck_dim=128, hidden_dim=512, skip_dim=128,
                      conv_kernel_size=3, num_layers=8, num_repeats=3),
        "small": dict(num_filters=128, kernel_size=16, bottleneck_dim=64, hidden_dim=128, skip_dim=64,
                      conv_kernel_size=3, num_layers=6, num_repeats=2),
        "debug": dict(num_filters=32, kernel_size=16, bottleneck_dim=16, hidden_dim=32, skip_dim=16,
                      conv_kernel_size=3, num_layers=3, num_repeats=1),
    },
    "dprnn": {
        "paper": dict(num_filters=64, kernel_size=2, feature_dim=64, hidden_dim=128, chunk_size=250,
                      num_blocks=6),
        "small": dict(num_filters=64, kernel_size=16, feature_dim=64, hidden_dim=64, chunk_size=100,
                      num_blocks=3),
        "debug": dict(num_filters=32, kernel_size=16, feature_dim=16, hidden_dim=16, chunk_size=50,
                      num_blocks=2),
    },
    "tfgridnet": {
        "paper": dict(n_fft=256, hop_length=64, embed_dim=128, num_blocks=4, unfold_kernel=4, unfold_stride=1,
                      lstm_hidden=256, num_heads=4, qk_dim=4),
        "small": dict(n_fft=256, hop_length=64, embed_dim=16, num_blocks=1, unfold_kernel=4, unfold_stride=4,
                      lstm_hidden=32, num_heads=2, qk_dim=2),
        "debug": dict(n_fft=128, hop_length=64, embed_dim=8, num_blocks=1, unfold_kernel=2, unfold_stride=1,
                      lstm_hidden=8, num_heads=2, qk_dim=2),
    },
    "glaunet": {
        "paper": dict(num_filters=512, kernel_size=16, bottleneck_dim=128, hidden_dim=512, num_levels=5,
                      level_kernel_size=5, num_heads=8, num_blocks=1, num_repeats=16),
        "small": dict(num_filters=128, kernel_size=16, bottleneck_dim=64, hidden_dim=128, num_levels=4,
                      level_kernel_size=5, num_heads=4, num_blocks=1, num_repeats=4),
        "debug": dict(num_filters=32, kernel_size=16, bottleneck_dim=16, hidden_dim=32, num_levels=3,
                      level_kernel_size=5, num_heads=2, num_blocks=1, num_repeats=2),
    },
    "avextractor": AV_CONFIGS,
}


def _builder(name: str) -> Callable[..., Separator]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_config(name: str, size: str = "paper") -> dict:
    """The builder kwargs of a named configuration: ``size`` is ``"paper"``, ``"small"`` (trains on a
    CPU) or ``"debug"`` (tests).

    Returns a fresh dict (safe to modify); it never contains ``num_sources``, which belongs to the
    task, not the architecture.

    Example::

        cfg = model_config("dprnn", "debug") | {"chunk_size": 100}    # a variant is a small diff
    """
    _builder(name)
    if size not in CONFIGS[name]:
        raise ValueError(f"unknown size {size!r} for {name!r}; sizes: {', '.join(CONFIGS[name])}")
    return dict(CONFIGS[name][size])


def build_model(name: str, num_sources: int = 2, **kwargs) -> Separator:
    """Build a registered model and record its spec (name + every builder kwarg, defaults included).

    Args:
        name: a key of :data:`MODELS` (``"convtasnet"``, ``"dprnn"``, ``"tfgridnet"``, ``"glaunet"``).
        num_sources: S, the number of waveforms the head outputs; only the head depends on it.
        **kwargs: the builder's architecture kwargs, usually ``model_config(name, size)``; missing
            ones take the builder's defaults (the paper config).

    Returns:
        a :class:`Separator` mapping (B, T) or (B, 1, T) to (B, S, T), with
        ``separator.spec == {"name": name, "kwargs": {"num_sources": S, ...all kwargs}}``.

    Raises:
        ValueError: unknown ``name``. TypeError: a kwarg the builder does not take.

    Example::

        model = build_model("tfgridnet", num_sources=3, **model_config("tfgridnet", "debug"))
    """
    builder = _builder(name)
    signature = inspect.signature(builder)
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        raise TypeError(f"{name} takes no argument {', '.join(map(repr, unknown))} "
                        f"(it takes: {', '.join(k for k in signature.parameters if k != 'num_sources')})")
    bound = signature.bind(num_sources=num_sources, **kwargs)
    bound.apply_defaults()
    model = builder(**bound.arguments)
    model.spec = {"name": name, "kwargs": dict(bound.arguments)}
    return model

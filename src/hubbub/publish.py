"""Publishing separators: a model directory with a model card that says what the model learnt from.

A published directory (and Hugging Face Hub repository) holds::

    config.json          registered model name + kwargs     (hubbub.models.save_model)
    model.safetensors    the weights (never pickle: loading cannot run code)
    README.md            model card: YAML metadata (library_name: hubbub, tags, license) and a
                         data card: recipe, rooms, RT60/SNR/SIR ranges, noise, speech corpus,
                         licences, hours and mixtures per split; training stage, steps, metrics
    data_card.json       the same card, machine-readable

A separation model's behaviour is set by its simulated training data (a model trained on
anechoic 2-speaker mixtures fails in a reverberant café), so the card carries the data's recipe,
not only the architecture::

    publish_run("runs/pit", "published/whamr-convtasnet", repo_id="me/whamr-convtasnet")
    model = from_pretrained("me/whamr-convtasnet")
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

import torch
from safetensors.torch import load_file

from hubbub import storage
from hubbub.models import Separator, build_model, load_backbone, load_model, save_model
from hubbub.models.io import BACKBONE, CONFIG_NAME, SEPARATOR, WEIGHTS_NAME, hub_snapshot, read_config
from hubbub.rundir import fetch_run
from hubbub.separate import CARD_NAME, RUN_CONFIG_NAME, RUN_MODEL_DIR
from hubbub.shards.writer import atomic_write_bytes, atomic_write_json, load_index
from hubbub.video import CROP_SIZE, FPS, ROI_SIZE

README_NAME = "README.md"
TAGS = ["speech-separation", "audio-to-audio"]
# Suffixes of pickle-based checkpoints (torch.save): refused, since unpickling can run any code.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}


def _strip_paths(obj):
    """Absolute paths -> their last component: a public card must not reveal a machine's layout."""
    if isinstance(obj, str):
        return Path(obj).name if os.path.isabs(obj) else obj
    if isinstance(obj, dict):
        return {k: _strip_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_paths(v) for v in obj]
    return obj


def _span(values, unit: str = "") -> str:
    """[lo, hi] -> "lo to hi unit" ("lo unit" when equal); a scalar as is."""
    suffix = f" {unit}" if unit else ""
    if isinstance(values, (list, tuple)):
        lo, hi = values
        return f"{lo:g}{suffix}" if lo == hi else f"{lo:g} to {hi:g}{suffix}"
    return f"{values:g}{suffix}" if isinstance(values, (int, float)) else str(values)


def _recipe_rows(recipe: dict, data: dict) -> list[tuple[str, str]]:
    """(property, value) rows describing how the training mixtures were simulated.

    A section missing from ``recipe`` gives no row; a present one is complete (recipes are
    written from the typed config).
    """
    rows = []
    if "sample_rate_hz" in recipe:
        rows.append(("sample rate", f"{recipe['sample_rate_hz']} Hz"))
    if speakers := recipe.get("speakers"):
        dist = speakers["distribution"]
        rows.append(("speakers per mixture", ", ".join(f"{k}: {p:.0%}" for k, p in dist.items())
                     if dist else str(speakers["count"])))
    if duration := recipe.get("duration"):
        rows.append(("duration", f"{duration['fixed_s']:g} s" if duration["mode"] == "fixed" else
                     f"{duration['mode']} of the utterances' lengths, at most {duration['max_s']:g} s"))
    if overlap := recipe.get("overlap"):
        rows.append(("overlap", "full" if overlap["mode"] == "full"
                     else f"{overlap['mode']}, ratio {_span(overlap['ratio'])}"))
    if room := recipe.get("room"):
        if room["rir_mode"] == "anechoic":
            rows.append(("room", "anechoic"))
        else:
            rows.append(("RT60", f"{_span(room['rt60_s'], 's')} ({room['rir_mode']} RIRs)"))
            rows.append(("room size", " × ".join(_span(room[k]) for k in ("length_m", "width_m", "height_m")) + " m"))
    if mics := recipe.get("mics"):
        rows.append(("microphones", f"{mics['count']} ({mics['array']})"))
    if mixing := recipe.get("mixing"):
        rows.append(("SIR", _span(mixing["sir_db"], "dB")))
    if noise := recipe.get("noise"):
        kind = noise["kind"]
        if kind != "none":
            rows.append(("SNR", _span(mixing["snr_db"], "dB")))
        if kind == "babble":
            kind = f"babble of {_span(noise['babble_speakers'])} speakers"
        elif kind == "coloured":
            kind = f"coloured, spectral exponent {_span(noise['colour_exponent'])}"
        elif kind == "folder":
            kind = f"recordings from {data.get('noise') or noise['folder']}"
        rows.append(("noise", kind if kind == "none" else f"{kind} ({noise['spatial']})"))
    return rows


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", f"{value:.3f}" if isinstance(value, float) else str(value)))
    return rows


STAGE_WORDS = {"pit": "supervised PIT on simulated mixtures", "mixit": "MixIT (unsupervised) on unlabelled mixtures",
               "codec": "codec-token prediction (self-supervised)",
               "av": "audio-visual target-speaker extraction on simulated mixtures with lip streams"}

# The model card, a Jinja template rendered by huggingface_hub (ModelCard.from_template): the YAML
# metadata (card_data), what the model is and how to use it, its training, and its data card.
# Block tags open with "{%-" at the start of their line, so a skipped block leaves no blank line.
CARD_TEMPLATE = """\
---
{{ card_data }}
---

{%- macro table(header, rows) -%}
| {{ header | join(" | ") }} |
|{% for _ in header %}---|{% endfor %}
{%- for row in rows %}
| {{ row | join(" | ") }} |
{%- endfor %}
{%- endmacro %}

# {{ title }}
{% if kind == "backbone" %}
A pretrained {{ name }} separator **backbone** ({{ params_m }} M parameters{{ rate_note }}), trained with hubbub \
by {{ how }}. It has no separation head (its pretraining heads are dropped when it is loaded): finetune it.

## Usage

```bash
hubbub finetune pit --init {{ title }} --shards CORPUS --out runs/finetuned
```
{%- elif kind == "av" %}
An audio-visual target-speaker extractor ({{ name }}, Dolphin-style; {{ params_m }} M parameters{{ rate_note }}), \
trained with hubbub by {{ how }}: given a mixture and one speaker's mouth regions of interest (grayscale, \
{{ crop_size }}x{{ crop_size }} centre crops of {{ roi_size }}x{{ roi_size }} frames at {{ fps }} fps), it returns \
that speaker. Its audio path is a GLA U-Net backbone: \
`hubbub finetune av --init {{ title }} ...` or `hubbub finetune pit --init {{ title }} ...`.

## Usage

```python
from hubbub.publish import from_pretrained
from hubbub.separate import load_lips, separate_waveform

model = from_pretrained("{{ title }}")
lips = load_lips("mouth.npy", len(mixture), {{ rate }})   # (F, {{ crop_size }}, {{ crop_size }}) uint8
target = separate_waveform(model, mixture, sample_rate_hz={{ rate }}, video=lips)   # (T,) -> (1, T)
```

or from the shell: `hubbub separate DIR mixture.wav --lips mouth.npy --out extracted/`.
{%- else %}
A {{ name }} speech separator with {{ num_sources }} outputs ({{ params_m }} M parameters{{ rate_note }}), trained \
with hubbub by {{ how }}. Its backbone can start finetuning: `hubbub finetune pit --init {{ title }} ...`.

## Usage

```python
from hubbub.publish import from_pretrained
from hubbub.separate import separate_waveform

model = from_pretrained("{{ title }}")
sources = separate_waveform(model, mixture, sample_rate_hz={{ rate }})   # (T,) -> (S, T)
```

or from the shell: `hubbub separate DIR mixture.wav --out separated/`.
{%- endif %}
{%- if training %}

## Training

{{ table(("stage", "steps", "target"), [(training.stage, training.steps, training.target) | map("default", "?")]) }}
{%- if metric_rows %}

Final metrics:

{{ table(("metric", "value"), metric_rows) }}
{%- endif %}
{%- endif %}

## Training data
{% if recipe.name %}
Mixtures simulated with the hubbub recipe **{{ recipe.name }}**\
{% if recipe.description %}: {{ recipe.description }}.{% else %}.{% endif %}
{% endif %}
{%- if recipe_rows %}
{{ table(("property", "value"), recipe_rows) }}
{% endif %}
{%- if speech %}
{{ speech }}
{% endif %}
Licences of the source audio: {{ licences }}.
{%- if split_rows %}

### Splits

{{ table(("split", "mixtures", "hours", "speakers"), split_rows) }}
{%- endif %}
{%- if recordings %}

Unlabelled recordings from **{{ recordings.source | default("?") }}**, cut into \
{{ recordings.segment_s | default("?") }} s segments at {{ recordings.sample_rate_hz | default("?") }} Hz \
(no sources known).
{%- endif %}
{%- if mixit %}

MixIT: {{ mixit.num_outputs }} outputs, mixture consistency {{ mixit.consistency }}, SNR threshold tau = \
{{ mixit.tau }}.
{%- endif %}
{%- if codec %}

Codec tokens ({{ codec_task }} task): EnCodec {{ codec.name | default("?") }}, \
{{ codec.num_codebooks | default("?") }} codebooks of {{ codec.codebook_size | default("?") }} at \
{{ codec.frame_rate_hz | default("?") }} Hz.
{%- endif %}
{%- if unlabelled %}

## Unlabelled data (semi-supervised MixIT)

Corpus **{{ unlabelled.name }}** ({{ unlabelled.hours }} hours), MixIT loss weight {{ unlabelled.weight }}.
{%- if unlabelled.rows %}

{{ table(("property", "value"), unlabelled.rows) }}
{%- endif %}
{%- endif %}

"""


def _card_text(model, card: dict, title: str, metadata: ModelCardData) -> str:
    """The model card's Markdown with its YAML metadata: :data:`CARD_TEMPLATE` filled from ``card``."""
    spec = model.spec or {}
    rate = card.get("sample_rate_hz")
    training = card.get("training") or {}
    if getattr(model, "checkpoint_contents", SEPARATOR) == BACKBONE:
        kind, params = "backbone", model.backbone.parameters()
    else:
        kind, params = ("av" if "video" in model.inputs else "separator"), model.parameters()
    data = card.get("data") or {}
    recipe = data.get("recipe") or {}
    corpus = data.get("speech_corpus_name") or data.get("speech_corpus")
    speakers = data.get("speakers_per_split") or {}
    unlabelled = data.get("unlabelled")
    if isinstance(unlabelled, dict):
        u_recipe = unlabelled.get("recipe") or {}
        unlabelled = {"name": u_recipe.get("name") or u_recipe.get("source") or "?",
                      "hours": f"{sum(s.get('hours', 0) for s in (unlabelled.get('splits') or {}).values()):g}",
                      "weight": unlabelled.get("weight"),
                      "rows": _recipe_rows(u_recipe, unlabelled.get("sources") or {})}
    mixit = data.get("mixit")
    return str(ModelCard.from_template(
        metadata, template_str=CARD_TEMPLATE, title=title, kind=kind,
        name=spec.get("name", "?" if kind == "backbone" else type(model).__name__),
        num_sources=getattr(model, "num_sources", None),
        params_m=f"{sum(p.numel() for p in params) / 1e6:.2f}", rate=rate or "RATE",
        rate_note=f", {rate} Hz" if rate else "", how=STAGE_WORDS.get(training.get("stage"), "hubbub"),
        crop_size=CROP_SIZE, roi_size=ROI_SIZE, fps=FPS,
        training=training, metric_rows=_flatten(training.get("final_metrics") or {}),
        recipe=recipe, recipe_rows=_recipe_rows(recipe, data),
        speech=corpus and (f"Speech: **{corpus}**"
                           + (f", {data['speech_hours']:g} hours" if data.get("speech_hours") is not None else "")
                           + (f" in {data['utterances']} utterances" if data.get("utterances") else "") + "."),
        licences=", ".join(data.get("licences") or ["not recorded"]),
        split_rows=[(name, s.get("num_samples", "?"), f"{s['hours']:g}" if "hours" in s else "?",
                     speakers.get(name, "?")) for name, s in (data.get("splits") or {}).items()],
        recordings=recipe if recipe.get("kind") == "recordings" else None,
        mixit=mixit and {**mixit, "tau": f"{mixit.get('tau'):g}"},
        codec=data.get("codec"), codec_task=data.get("codec_task", "?"), unlabelled=unlabelled))


def save_pretrained(model: Separator, out_dir: str | Path, *, card: dict) -> Path:
    """Write ``model`` with its model card: config.json, model.safetensors, README.md, data_card.json.

    Args:
        model: a separator built by :func:`hubbub.models.build_model` (it needs a spec).
        out_dir: created if needed; files are written atomically (temporary name, rename).
        card: what the card says beyond the model itself; every key is optional::

            license          the model's licence, a Hub licence id ("apache-2.0", "cc-by-4.0";
                             default "other")
            title            the card's title and the id in its usage example (default: out_dir's name)
            sample_rate_hz   the model's rate (hubbub separate reads it from data_card.json)
            training         {"stage", "steps", "target", "final_metrics": {name: value}}
            data             the data card: {"recipe": recipe dict, "splits": {split:
                             {"num_samples", "hours"}}, "speech_corpus_name", "speech_hours",
                             "utterances", "speakers_per_split", "licences", "noise"} (a corpus
                             index.json's data_card plus its recipe and splits)

            Absolute paths anywhere in it are reduced to their last component.

    Returns:
        ``out_dir``.

    Example::

        save_pretrained(model, "published/tiny", card={"license": "apache-2.0", "sample_rate_hz": 8000})
    """
    out_dir = Path(out_dir)
    card = _strip_paths(card)
    save_model(model, out_dir)
    title = card.get("title") or out_dir.resolve().name
    metadata = ModelCardData(license=card.get("license") or "other", library_name="hubbub", tags=list(TAGS),
                             pipeline_tag="audio-to-audio")
    atomic_write_bytes(out_dir / README_NAME, _card_text(model, card, title, metadata).encode())
    atomic_write_json(out_dir / CARD_NAME, card)
    return out_dir


def _check_weights(directory: Path, source: str) -> None:
    if (directory / WEIGHTS_NAME).exists() and (directory / CONFIG_NAME).exists():
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{source} holds a pickle checkpoint ({', '.join(pickles)}) but no {WEIGHTS_NAME}: "
                         f"hubbub loads safetensors only, because unpickling a file can run arbitrary code. "
                         f"If you trust it, load it yourself and write it with hubbub.models.save_model.")
    raise FileNotFoundError(f"{source} has no {CONFIG_NAME} + {WEIGHTS_NAME} (a hubbub model directory)")


def from_pretrained(dir_or_repo_id: str | Path, *, revision: str | None = None) -> Separator:
    """Load a published separator from a local directory or a Hugging Face Hub repository.

    Args:
        dir_or_repo_id: a directory written by :func:`save_pretrained` (or :func:`publish_run`,
            or any ``save_model`` directory), or a Hub model id ``"namespace/name"``; anything
            that is not an existing directory is treated as a repo id.
        revision: Hub branch, tag or commit (repo ids only).

    Returns:
        the separator on CPU, in eval mode.

    Raises:
        ValueError: the directory has only a pickle checkpoint (``pytorch_model.bin``, ``*.pt``...):
            those are refused, never unpickled.
        FileNotFoundError: a path that does not exist, or a directory/repo without
            config.json + model.safetensors.

    Only config.json, model.safetensors and the card are downloaded from a repo, never other files.

    Example::

        model = from_pretrained("published/whamr-convtasnet")
        model = from_pretrained("me/whamr-convtasnet")
    """
    source = str(dir_or_repo_id)
    directory = Path(dir_or_repo_id)
    if not directory.is_dir():
        # A Hub id is "name" or "namespace/name"; anything path-like that is missing is a typo,
        # which the Hub's "repository not found" would only obscure (hub_snapshot tells them apart).
        directory = hub_snapshot(source, [CONFIG_NAME, WEIGHTS_NAME, README_NAME, CARD_NAME], revision)
    _check_weights(directory, source)
    return load_model(directory).eval()


class _PretrainedBackbone(torch.nn.Module):
    """A backbone checkpoint (pretraining heads included) as a module that save_model rewrites."""

    checkpoint_contents = BACKBONE

    def __init__(self, directory: Path):
        super().__init__()
        config = read_config(directory)
        self.spec = {"name": config["name"], "kwargs": config["kwargs"]}
        self.checkpoint_heads = config.get("heads")
        self.backbone = build_model(config["name"], **config["kwargs"]).backbone
        self.state = load_file(str(directory / WEIGHTS_NAME))
        load_backbone(self, self.state)

    def state_dict(self, *args, **kwargs):
        return dict(self.state)


def load_checkpoint(directory: str | Path):
    """A model directory as a module to publish: the separator, or a pretrained backbone with its
    pretraining heads (``"contents": "backbone"``, written back unchanged)."""
    directory = Path(directory)
    if read_config(directory).get("contents", SEPARATOR) == BACKBONE:
        return _PretrainedBackbone(directory)
    return load_model(directory)


def _licence_id(licences: list[str]) -> str:
    """The Hub licence id implied by the training audio's licences: the single one, lower-cased
    (SPDX "CC-BY-4.0" -> Hub "cc-by-4.0"); "other" for none, several or unknown."""
    distinct = set(licences)
    if len(distinct) != 1 or "unknown" in distinct:
        return "other"
    return distinct.pop().lower()


def run_card(run_dir: str | Path, *, license: str | None = None) -> dict:
    """The card of a training run (see :func:`save_pretrained`), from ``run.json`` and its corpus.

    The data card is the corpus ``index.json``'s (data card, recipe, splits) when the corpus
    directory named by ``config.data.shards`` still exists, else the ``data_card`` that run.json
    kept (the trainer copies those three into it). The licence defaults to the training audio's,
    when it has exactly one.
    """
    run_dir = Path(run_dir)
    run = json.loads((run_dir / RUN_CONFIG_NAME).read_text())
    config = run.get("config") or {}
    data = dict(run.get("data_card") or {})
    shards = (config.get("data") or {}).get("shards")
    if shards and storage.exists(storage.join(shards, "index.json")):
        index = load_index(shards)
        data.update(index.get("data_card") or {}, recipe=index.get("recipe", {}), splits=index.get("splits", {}))
    return {
        "license": license or _licence_id(data.get("licences") or []),
        "sample_rate_hz": run.get("sample_rate_hz"),
        "training": {"stage": run.get("stage"), "steps": (run.get("state") or {}).get("step", run.get("steps")),
                     "target": (config.get("data") or {}).get("target"), "model": config.get("model"),
                     "final_metrics": run.get("final_metrics") or {}},
        "data": data,
    }


def upload(folder: str | Path, repo_id: str, *, private: bool = True) -> str:
    """Upload a published folder to a Hub model repository (created if missing); returns the
    commit URL. Needs a token (``huggingface-cli login`` or ``HF_TOKEN``)."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload hubbub separator")
    return commit.commit_url


def publish_run(run_dir: str | Path, to_dir: str | Path, *, repo_id: str | None = None, private: bool = True,
                license: str | None = None) -> Path:
    """Publish a training run's final model: :func:`save_pretrained` with :func:`run_card`,
    then, with ``repo_id``, :func:`upload` to the Hub.

    Args:
        run_dir: a training run (``run.json`` + ``model/``).
        to_dir: the published directory (created; existing files of the same names replaced).
        repo_id: Hub model id to upload to, ``"namespace/name"``; None publishes locally only.
        private: create the Hub repository private (an existing repository keeps its visibility).
        license: the model's Hub licence id; default from the training audio (see :func:`run_card`).

    Returns:
        ``to_dir``.

    Example::

        publish_run("runs/pit", "published/whamr-convtasnet", repo_id="me/whamr-convtasnet")
    """
    run_dir = fetch_run(run_dir)  # a run in an object store: run.json and model/ fetched
    card = run_card(run_dir, license=license)
    card["title"] = repo_id or Path(to_dir).resolve().name
    to_dir = save_pretrained(load_checkpoint(run_dir / RUN_MODEL_DIR), to_dir, card=card)
    if repo_id:
        upload(to_dir, repo_id, private=private)
    return to_dir

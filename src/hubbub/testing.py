"""Small factories for tests and demos: dummy audio, dummy corpora, tiny speech folders.

Everything here is deterministic from its ``seed`` and makes its own data (nothing downloads).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from hubbub.shards.format import encode_flac, encode_json, encode_npy, quantize, sample_key, shard_name
from hubbub.shards.writer import ShardRecord, ShardWriter, build_index, write_sidecar


def dummy_speech(rng: np.random.Generator, seconds: float, sample_rate_hz: int = 16000) -> np.ndarray:
    """A speech-like signal: harmonic bursts with a random pitch and syllable-rate envelope."""
    n = int(seconds * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    f0 = rng.uniform(90, 250)
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6.28)), 0, None) ** 2
    x = x * envelope + 0.01 * rng.standard_normal(n)
    return (0.1 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def make_dummy_sample(split: str, index: int, *, num_speakers: int = 2, num_mics: int = 1,
                      seconds: float = 1.0, sample_rate_hz: int = 8000, seed: int = 0) -> dict:
    """One sample in shard member form (``__key__`` + member bytes), without room simulation.

    Reverberant images are the dry sources through a random short decaying filter, so the sample
    satisfies the format's invariants (mix == sum of reverberant images + noise, exactly).
    """
    rng = np.random.default_rng([seed, index, sum(map(ord, split))])
    n = int(seconds * sample_rate_hz)
    key = sample_key(split, index)
    members: dict = {"__key__": key}
    q_rev = []
    sources_meta = []
    for s in range(num_speakers):
        dry = dummy_speech(rng, seconds, sample_rate_hz)
        rir = (rng.standard_normal((num_mics, 64)) * np.exp(-np.arange(64) / 10.0)).astype(np.float32)
        rir[:, 0] = 1.0
        rev = np.stack([np.convolve(dry, rir[m])[:n] for m in range(num_mics)]) * 0.5
        direct = np.stack([dry] * num_mics) * 0.5
        members[f"s{s}.dry.flac"] = encode_flac(quantize(dry), sample_rate_hz)
        members[f"s{s}.direct.flac"] = encode_flac(quantize(direct), sample_rate_hz)
        members[f"s{s}.early.flac"] = encode_flac(quantize(direct), sample_rate_hz)
        q = quantize(rev)
        q_rev.append(q)
        members[f"s{s}.reverberant.flac"] = encode_flac(q, sample_rate_hz)
        members[f"s{s}.rir.npy"] = encode_npy(rir)
        sources_meta.append({"speaker": f"spk{rng.integers(100):03d}", "sir_db": float(rng.uniform(-5, 5)),
                             "offset_s": 0.0, "path": f"dummy/{index}_{s}.wav", "licence": "CC0-1.0"})
    q_noise = quantize(0.01 * rng.standard_normal((num_mics, n)))
    members["noise.flac"] = encode_flac(q_noise, sample_rate_hz)
    members["mix.flac"] = encode_flac(sum(q_rev) + q_noise, sample_rate_hz)
    meta = {
        "key": key, "split": split, "index": index, "sample_rate_hz": sample_rate_hz,
        "num_samples": n, "duration_s": n / sample_rate_hz, "num_speakers": num_speakers,
        "num_mics": num_mics, "targets": ["dry", "direct", "early", "reverberant", "noise", "rir"],
        "room": {"rt60_s_target": float(rng.uniform(0.2, 0.8)), "rt60_s_measured": float(rng.uniform(0.2, 0.8))},
        "noise": {"kind": "white", "snr_db": float(rng.uniform(0, 20))},
        "mixing": {"overlap_ratio": float(rng.uniform(0, 1))},
        "sources": sources_meta,
    }
    members["json"] = encode_json(meta)
    return members


def make_dummy_corpus(out_dir: str | Path, *, splits: dict[str, int] | None = None,
                      samples_per_shard: int = 4, num_speakers: int | list[int] = 2, num_mics: int = 1,
                      seconds: float = 1.0, sample_rate_hz: int = 8000, seed: int = 0) -> Path:
    """A small corpus in hubbub's shard format (shards, sidecars, index.json) with no simulation.

    ``num_speakers`` may be a list to cycle through (variable speaker counts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = splits or {"train": 8, "valid": 4}
    counts = num_speakers if isinstance(num_speakers, list) else [num_speakers]
    records = []
    for split, num in splits.items():
        for shard_index, first in enumerate(range(0, num, samples_per_shard)):
            rec = ShardRecord(name=shard_name(split, shard_index), split=split, shard_index=shard_index,
                              first_sample=first, num_planned=min(samples_per_shard, num - first))
            with ShardWriter(out_dir / rec.name) as w:
                for i in range(first, first + rec.num_planned):
                    members = make_dummy_sample(split, i, num_speakers=counts[i % len(counts)],
                                                num_mics=num_mics, seconds=seconds,
                                                sample_rate_hz=sample_rate_hz, seed=seed)
                    w.write(members)
                    rec.keys.append(members["__key__"])
                    rec.durations_s.append(seconds)
            write_sidecar(rec, out_dir)
            records.append(rec)
    build_index(out_dir, records, recipe={"name": "dummy", "sample_rate_hz": sample_rate_hz})
    return out_dir


def make_speech_folder(out_dir: str | Path, *, layout: str = "librispeech", num_speakers: int = 4,
                       utterances_per_speaker: int = 3, seconds: float = 2.0,
                       sample_rate_hz: int = 16000, seed: int = 0) -> Path:
    """A tiny speech corpus laid out like LibriSpeech (``spk/chapter/spk-chapter-utt.flac``) or
    VCTK (``wav48/p225/p225_001.wav``), filled with :func:`dummy_speech`."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for s in range(num_speakers):
        for u in range(utterances_per_speaker):
            x = dummy_speech(rng, seconds * rng.uniform(0.8, 1.2), sample_rate_hz)
            if layout == "librispeech":
                spk, chap = 100 + s, 10 + s
                path = out_dir / str(spk) / str(chap) / f"{spk}-{chap}-{u:04d}.flac"
            elif layout == "vctk":
                path = out_dir / "wav48" / f"p{225 + s}" / f"p{225 + s}_{u + 1:03d}.wav"
            else:
                raise ValueError(f"unknown layout {layout!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, x, sample_rate_hz)
    return out_dir


def make_bad_files(out_dir: str | Path, sample_rate_hz: int = 16000) -> dict[str, str]:
    """Files a real corpus may hold, placed in a LibriSpeech-style tree; returns {path: expected
    reason} for those that must be skipped. Also writes a 44.1 kHz stereo file that must be kept."""
    out_dir = Path(out_dir)
    d = out_dir / "999" / "1"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    bad = {}
    nan = dummy_speech(rng, 2.0, sample_rate_hz)
    nan[100:200] = np.nan
    sf.write(d / "999-1-0000.wav", nan, sample_rate_hz, subtype="FLOAT")
    bad[str(d / "999-1-0000.wav")] = "non-finite"
    sf.write(d / "999-1-0001.wav", np.zeros(0, np.float32), sample_rate_hz)
    bad[str(d / "999-1-0001.wav")] = "empty"
    (d / "999-1-0002.wav").write_text("this is not audio\n")
    bad[str(d / "999-1-0002.wav")] = "unreadable"
    sf.write(d / "999-1-0003.flac", dummy_speech(rng, 0.1, sample_rate_hz), sample_rate_hz)
    bad[str(d / "999-1-0003.flac")] = "too-short"
    sf.write(d / "999-1-0004.wav", np.zeros(sample_rate_hz, np.float32), sample_rate_hz)
    bad[str(d / "999-1-0004.wav")] = "silent"
    stereo = np.stack([dummy_speech(rng, 2.0, 44100), dummy_speech(rng, 2.0, 44100)], axis=1)
    sf.write(d / "999-1-0005.wav", stereo, 44100)
    return bad


def make_dummy_run(run_dir: str | Path, corpus_dir: str | Path, *, target: str = "reverberant",
                   sample_rate_hz: int = 8000, steps: int = 3, final_metrics: dict | None = None,
                   data_card: dict | None = None) -> Path:
    """A run directory as the trainer writes it: ``model/`` (an untrained debug Conv-TasNet with
    2 outputs, seeded) and ``run.json``; for testing what reads runs (evaluate, separate, publish)."""
    import json

    import torch

    from hubbub.models import build_model, model_config, save_model

    run_dir = Path(run_dir)
    torch.manual_seed(0)
    save_model(build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug")), run_dir / "model")
    run = {"stage": "pit", "sample_rate_hz": sample_rate_hz, "steps": steps, "final_metrics": final_metrics or {},
           "config": {"data": {"shards": str(corpus_dir), "target": target, "train_split": "train"},
                      "model": {"name": "convtasnet", "size": "debug", "num_sources": 2}},
           "data_card": data_card or {}}
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir

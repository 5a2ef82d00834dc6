"""Small factories for tests and demos: dummy audio, dummy corpora, tiny speech and AV folders.

Everything here is deterministic from its ``seed`` and makes its own data (nothing downloads).
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from hubbub.schema import SampleMeta, member_name
from hubbub.shards.format import encode_audio, encode_json, encode_npy, encode_npy_zst, quantize, sample_key, shard_name
from hubbub.shards.writer import ShardRecord, ShardWriter, build_index, write_sidecar
from hubbub.sources.mouths import lip_stream
from hubbub.video import num_video_frames


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
                      seconds: float = 1.0, sample_rate_hz: int = 8000, seed: int = 0,
                      lips: bool = False, codec: str = "flac", bits: int = 24) -> dict:
    """One sample in shard member form (``__key__`` + member bytes), without room simulation.

    Reverberant images are the dry sources through a random short decaying filter, so the sample
    satisfies the format's invariants (mix == sum of reverberant images + noise, exactly). Audio is
    stored as ``codec`` (flac, wav) in ``bits`` (24, 16) bits, as a recipe's ``storage`` says.
    ``lips=True`` adds the target "lips": ``s{k}.lips.npy.zst`` (F, 96, 96) uint8 mouths that open
    where source k is loud, and their ``sources[k]["lips"]`` entries (the rest is unchanged).
    """
    rng = np.random.default_rng([seed, index, sum(map(ord, split))])
    n = int(seconds * sample_rate_hz)
    key = sample_key(split, index)
    members: dict = {"__key__": key}
    q_rev = []
    sources_meta = []
    drys = []
    for s in range(num_speakers):
        dry = dummy_speech(rng, seconds, sample_rate_hz)
        drys.append(dry)
        rir = (rng.standard_normal((num_mics, 64)) * np.exp(-np.arange(64) / 10.0)).astype(np.float32)
        rir[:, 0] = 1.0
        rev = np.stack([np.convolve(dry, rir[m])[:n] for m in range(num_mics)]) * 0.5
        direct = np.stack([dry] * num_mics) * 0.5
        members[member_name("dry", s)] = encode_audio(quantize(dry, bits), sample_rate_hz, codec, bits)
        members[member_name("direct", s)] = encode_audio(quantize(direct, bits), sample_rate_hz, codec, bits)
        members[member_name("early", s)] = encode_audio(quantize(direct, bits), sample_rate_hz, codec, bits)
        q = quantize(rev, bits)
        q_rev.append(q)
        members[member_name("reverberant", s)] = encode_audio(q, sample_rate_hz, codec, bits)
        members[member_name("rir", s)] = encode_npy(rir)
        sources_meta.append({"speaker": f"spk{rng.integers(100):03d}", "sir_db": float(rng.uniform(-5, 5)),
                             "offset_s": 0.0, "path": f"dummy/{index}_{s}.wav", "licence": "CC0-1.0"})
    q_noise = quantize(0.01 * rng.standard_normal((num_mics, n)), bits)
    members[member_name("noise")] = encode_audio(q_noise, sample_rate_hz, codec, bits)
    members[member_name("mix")] = encode_audio(sum(q_rev) + q_noise, sample_rate_hz, codec, bits)
    meta = {
        "key": key, "split": split, "index": index, "sample_rate_hz": sample_rate_hz,
        "num_samples": n, "duration_s": n / sample_rate_hz, "num_speakers": num_speakers,
        "num_mics": num_mics, "targets": ["dry", "direct", "early", "reverberant", "noise", "rir"],
        "room": {"rt60_s_target": float(rng.uniform(0.2, 0.8)), "rt60_s_measured": float(rng.uniform(0.2, 0.8))},
        "noise": {"kind": "white", "snr_db": float(rng.uniform(0, 20))},
        "mixing": {"overlap_ratio": float(rng.uniform(0, 1))},
        "sources": sources_meta,
    }
    if (codec, bits) != ("flac", 24):
        meta["storage"] = {"codec": codec, "bits": bits}
    if lips:  # after every draw from rng: samples without lips stay as they were
        meta["targets"].append("lips")
        num_frames = num_video_frames(n, sample_rate_hz)
        for s, dry in enumerate(drys):
            phonemes = envelope_phonemes(dry, sample_rate_hz)
            sources_meta[s]["lips"] = {"kind": "phonemes", "fps": 25, "num_frames": num_frames, "seed": index,
                                       "phoneme_set": "cmu", "phonemes": phonemes}
            frames = _mouths(sources_meta[s]["speaker"], phonemes, num_frames, index)
            members[member_name("lips", s)] = encode_npy_zst(frames)
    members["json"] = encode_json(meta)
    return members


def envelope_phonemes(x: np.ndarray, sample_rate_hz: int) -> list[list]:
    """Fake CMU phoneme timings for a signal: ``aa`` (open mouth) over 40 ms frames whose RMS is
    above a quarter of the loudest frame's, ``pau`` (closed) elsewhere; ``[[name, start_s, end_s]]``."""
    hop = sample_rate_hz // 25
    num = -(-len(x) // hop)
    padded = np.pad(np.asarray(x, np.float64), (0, num * hop - len(x)))
    rms = np.sqrt((padded.reshape(num, hop) ** 2).mean(axis=1))
    loud = rms > 0.25 * (rms.max() + 1e-12)
    rows: list[list] = []
    for j, on in enumerate(loud):
        name = "aa" if on else "pau"
        if rows and rows[-1][0] == name:
            rows[-1][2] = round((j + 1) / 25, 6)
        else:
            rows.append([name, round(j / 25, 6), round((j + 1) / 25, 6)])
    return rows


def _mouths(speaker: str, phonemes: list, num_frames: int, seed: int) -> np.ndarray:
    return lip_stream({"speaker": speaker, "phoneme_set": "cmu", "phonemes": phonemes}, num_frames, seed=seed)


def make_corpus_from_samples(out_dir: str | Path, samples: list[dict]) -> Path:
    """One shard per split of hand-made samples (member dicts, e.g. damaged copies of
    :func:`make_dummy_sample`'s), with sidecars and ``index.json``: hashes match, so only the
    content checks of :func:`hubbub.shards.verify.verify_corpus` can find what a test broke."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for split in dict.fromkeys(json.loads(m["json"])["split"] for m in samples):
        rec = ShardRecord(name=shard_name(split, 0), split=split, shard_index=0, first_sample=0, num_planned=0)
        with ShardWriter(out_dir / rec.name) as w:
            for m in samples:
                meta = json.loads(m["json"])
                if meta["split"] == split:
                    w.write(m)
                    rec.keys.append(m["__key__"])
                    # a damaged JSON (what a test may have broken) still gets its stored duration
                    rec.durations_s.append(_duration_s(meta))
        rec.num_planned = rec.num_samples
        write_sidecar(rec, out_dir, w)
        records.append(rec)
    build_index(out_dir, records, recipe={"name": "test"})
    return out_dir


def _duration_s(meta: dict) -> float:
    try:
        return SampleMeta.from_dict(meta).duration_s
    except ValueError:
        return meta["duration_s"]


def make_dummy_corpus(out_dir: str | Path, *, splits: dict[str, int] | None = None,
                      samples_per_shard: int = 4, num_speakers: int | list[int] = 2, num_mics: int = 1,
                      seconds: float = 1.0, sample_rate_hz: int = 8000, seed: int = 0,
                      lips: bool = False, codec: str = "flac", bits: int = 24) -> Path:
    """A small corpus in hubbub's shard format (shards, sidecars, index.json) with no simulation.

    ``num_speakers`` may be a list to cycle through (variable speaker counts); ``lips`` adds a lip
    stream per source, ``codec`` and ``bits`` how audio is stored (see :func:`make_dummy_sample`).
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
                                                sample_rate_hz=sample_rate_hz, seed=seed, lips=lips,
                                                codec=codec, bits=bits)
                    w.write(members)
                    rec.keys.append(members["__key__"])
                    rec.durations_s.append(seconds)
            write_sidecar(rec, out_dir, w)
            records.append(rec)
    targets = ["dry", "direct", "early", "reverberant", "noise", "rir"] + (["lips"] if lips else [])
    build_index(out_dir, records, recipe={"name": "dummy", "sample_rate_hz": sample_rate_hz, "targets": targets})
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


def _av_path(root: Path, layout: str, speaker: int, utterance: int) -> Path:
    if layout == "lrs":      # LRS3: <TED talk id>/<5 digits>.wav
        return root / "trainval" / f"talk{speaker:02d}Xq" / f"{50001 + utterance:05d}.wav"
    if layout == "voxceleb2":  # <speaker id>/<YouTube video id>/<5 digits>.wav
        return root / f"id{10001 + speaker:05d}" / f"vid{utterance % 2}Ab" / f"{utterance + 1:05d}.wav"
    raise ValueError(f"unknown layout {layout!r} (expected 'lrs' or 'voxceleb2')")


def write_roi(path: str | Path, frames: np.ndarray, roi_format: str = "npy") -> Path:
    """Save ``(F, H, W)`` uint8 frames as a ROI file ``{path}.npy`` / ``{path}.npz`` (key "data")
    or a folder ``{path}/`` of PNG frames (``roi_format`` "npy", "npz", "frames"); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if roi_format == "npy":
        out = path.with_suffix(".npy")
        np.save(out, frames, allow_pickle=False)
    elif roi_format == "npz":
        out = path.with_suffix(".npz")
        np.savez_compressed(out, data=frames)
    elif roi_format == "frames":
        from PIL import Image

        out = path.with_suffix("")
        out.mkdir(parents=True, exist_ok=True)
        for j, frame in enumerate(frames):
            Image.fromarray(frame).save(out / f"{j:05d}.png")
    else:
        raise ValueError(f"unknown roi_format {roi_format!r} (expected 'npy', 'npz' or 'frames')")
    return out


def make_av_folder(out_dir: str | Path, *, layout: str = "lrs", num_speakers: int = 4,
                   utterances_per_speaker: int = 2, seconds: float = 2.0, sample_rate_hz: int = 16000,
                   seed: int = 0, roi_format: str = "npy", lips_dir: str | Path | None = None) -> Path:
    """A tiny audio-visual corpus laid out like LRS3 (``trainval/<talk>/<5 digits>.wav``) or
    VoxCeleb2 (``id<5 digits>/<video>/<5 digits>.wav``): :func:`dummy_speech` audio and, per
    utterance (one ROI file per audio file, as real corpora have), its mouth frames
    ``(ceil(seconds * 25), 96, 96)`` uint8 drawn by :mod:`hubbub.sources.mouths` from
    :func:`envelope_phonemes` (the mouth opens where the audio is loud). ROI files go beside the
    audio with the same stem, or at the same relative path under ``lips_dir``."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for s in range(num_speakers):
        for u in range(utterances_per_speaker):
            x = dummy_speech(rng, seconds * rng.uniform(0.8, 1.2), sample_rate_hz)
            path = _av_path(out_dir, layout, s, u)
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, x, sample_rate_hz)
            frames = _mouths(path.parent.name, envelope_phonemes(x, sample_rate_hz),
                             num_video_frames(len(x), sample_rate_hz), seed=u)
            roi = path if lips_dir is None else Path(lips_dir) / path.relative_to(out_dir)
            write_roi(roi, frames, roi_format)
    return out_dir


def make_bad_rois(out_dir: str | Path, sample_rate_hz: int = 16000) -> dict[str, str]:
    """Utterances with ROI files a real AV corpus may hold, in an LRS-style folder
    ``trainval/badtalk/`` of ``out_dir``; returns {audio path: expected skip reason}. Also writes
    one that must be kept: 88x88 frames (resized on load), 2 frames more than its audio's."""
    d = Path(out_dir) / "trainval" / "badtalk"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    bad = {}

    def utterance(number: int) -> tuple[Path, int]:
        x = dummy_speech(rng, 2.0, sample_rate_hz)
        path = d / f"{number:05d}.wav"
        sf.write(path, x, sample_rate_hz)
        return path, num_video_frames(len(x), sample_rate_hz)

    frames = lambda f, size=96: rng.integers(0, 256, (f, size, size), dtype=np.uint8)  # noqa: E731
    path, f = utterance(1)                                   # no ROI file at all
    bad[str(path)] = "no-lips"
    path, f = utterance(2)                                   # a ROI of another clip: half the frames
    np.save(path.with_suffix(".npy"), frames(f // 2))
    bad[str(path)] = "lips-length-mismatch"
    path, f = utterance(3)                                   # face crops, not mouth crops
    np.save(path.with_suffix(".npy"), frames(f, 64))
    bad[str(path)] = "lips-too-small"
    path, f = utterance(4)                                   # a pickle
    np.save(path.with_suffix(".npy"), np.array([{"frames": None}] * f, dtype=object), allow_pickle=True)
    bad[str(path)] = "bad-lips"
    path, f = utterance(5)                                   # NaN in float frames
    nan = frames(f).astype(np.float32)
    nan[0, 0, 0] = np.nan
    np.save(path.with_suffix(".npy"), nan)
    bad[str(path)] = "bad-lips"
    path, f = utterance(6)                                   # one image, not a clip
    np.save(path.with_suffix(".npy"), frames(1)[0])
    bad[str(path)] = "bad-lips"
    path, f = utterance(7)                                   # usable: 88x88, +2 frames
    np.save(path.with_suffix(".npy"), frames(f + 2, 88))
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


def make_simulator(speech_corpus: str | Path, recipe: str = "debug", *overrides: str, seed: int = 0):
    """A :class:`hubbub.simulate.sample.Simulator` of a preset (plus ``key=value`` overrides) on a
    speech corpus, its sources indexed and split as ``hubbub simulate`` does."""
    from hubbub.simulate import load_recipe
    from hubbub.simulate.runner import prepare_sources
    from hubbub.simulate.sample import Simulator

    loaded = load_recipe(recipe, [f"speech.corpus={speech_corpus}", *overrides])
    pools, _, _ = prepare_sources(loaded, seed=seed)
    return Simulator(loaded, pools, seed=seed)


def simulate_one(simulator, out_dir: str | Path, index: int = 0, split: str = "train") -> dict:
    """Write sample ``index`` of ``split`` as a one-sample shard in ``out_dir`` and read it back
    decoded (:func:`hubbub.shards.format.decode_sample`), through the shard writer and webdataset."""
    import webdataset as wds

    from hubbub.shards.format import decode_sample
    from hubbub.simulate.runner import ShardPlan, write_shard

    write_shard(simulator, ShardPlan(split, 0, index, 1), str(out_dir))
    raw = next(iter(wds.WebDataset(str(Path(out_dir) / shard_name(split, 0)), shardshuffle=False,
                                   empty_check=False)))
    return decode_sample(raw)


def stale_temporary(path: str | Path, data: bytes = b"partial") -> Path:
    """The temporary file a killed writer of ``path`` leaves (see
    :func:`hubbub.storage.temporary_name`): its process is gone."""
    from hubbub import storage

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = storage.temporary_name(path)
    head, _pid, rand, tail = live.name.rsplit(".", 3)
    stale = live.with_name(f"{head}.{done.stdout.strip()}.{rand}.{tail}")
    stale.write_bytes(data)
    return stale


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous or a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hubbub_launch(config_file: str | Path, *args: str, num_processes: int | None = None) -> list[str]:
    """The command line of ``accelerate launch --config_file CONFIG -m hubbub.cli ARGS``, through
    this interpreter (``python -m accelerate.commands.launch``: no ``accelerate`` executable on
    PATH, so a virtual environment need not be activated) with a free rendezvous port."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--main_process_port", str(free_port())]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["-m", "hubbub.cli", *args]


# moto's server, ending with the process that started it even when that one is killed without
# running its cleanup (a benchmark stopped with SIGKILL, a CI timeout): a thread watches the parent.
_MOTO_SERVER = """
import os, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"""


@contextlib.contextmanager
def s3_server(bucket: str = "hubbub-test"):
    """A real S3 HTTP API on 127.0.0.1 (moto in server mode, in its own process) with one empty
    bucket; yields ``s3://{bucket}``. While it runs, the ``AWS_*`` variables of this process
    (inherited by the processes it starts: Ray workers, ``accelerate launch``) point every S3
    client, s3fs included, at it. Nothing leaves the machine."""
    import tempfile

    port = free_port()
    recording = Path(tempfile.mkdtemp(prefix="hubbub-moto-")) / "requests.jsonl"
    # The server can record every request (S3RequestLog); its log goes to a file of our own.
    proc = subprocess.Popen([sys.executable, "-c", _MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(recording)})
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the moto S3 server did not start on port {port}")
            time.sleep(0.1)
        import fsspec
        import s3fs

        # fsspec keeps one client per set of arguments, whatever the endpoint it was made for:
        # one made for an earlier server of this process would call a closed port.
        s3fs.S3FileSystem.clear_instance_cache()
        fsspec.filesystem("s3").mkdir(bucket)
        yield f"s3://{bucket}"
    finally:
        with contextlib.suppress(ImportError):
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)
        recording.unlink(missing_ok=True)
        recording.parent.rmdir()


class S3RequestLog:
    """Requests the S3 server of :func:`s3_server` received, as the server saw them (moto's
    recorder): a count that includes every process, Ray workers and DataLoader workers too.
    Example::

        with S3RequestLog() as log:
            ...                                   # anything that reads from the bucket
        log.bytes_read("train-")                  # bytes of GETs of objects whose name has "train-"
    """

    def __init__(self, endpoint: str | None = None):
        self.endpoint = endpoint or os.environ["AWS_ENDPOINT_URL"]
        self.entries: list[dict] = []

    def _post(self, what: str) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{what}", method="POST"),
                               timeout=30).read()

    def __enter__(self) -> "S3RequestLog":
        self._post("reset-recording")
        self._post("start-recording")
        return self

    def __exit__(self, *exc) -> None:
        import json
        import urllib.request

        self._post("stop-recording")
        text = urllib.request.urlopen(f"{self.endpoint}/moto-api/recorder/download-recording", timeout=30).read()
        self.entries = [json.loads(line) for line in text.decode().splitlines() if line.strip()]

    def gets(self, name_part: str = "") -> list[dict]:
        return [e for e in self.entries if e["method"] == "GET" and name_part in e["url"].split("?")[0]]

    def bytes_read(self, name_part: str = "", sizes: dict[str, int] | None = None) -> int:
        """Bytes the GETs of matching objects asked for (:func:`request_bytes`)."""
        return sum(request_bytes(e, sizes) for e in self.gets(name_part))


def request_bytes(entry: dict, sizes: dict[str, int] | None = None) -> int:
    """Bytes of objects one recorded GET asked for: its Range, or the whole object (its size from
    ``sizes``, object name -> bytes) for a GET without one; a listing (``?list-type=2``, what the
    reader's one size check before the first sample sends) reads no object: 0."""
    if "list-type=" in entry["url"].split("?", 1)[-1] and "?" in entry["url"]:
        return 0
    rng = {k.lower(): v for k, v in entry["headers"].items()}.get("range")
    if rng:
        first, last = rng.split("=", 1)[1].split("-")
        return int(last) - int(first) + 1
    name = entry["url"].split("?")[0].rsplit("/", 1)[-1]
    if sizes is None or name not in sizes:
        raise ValueError(f"a GET of all of {name}: pass its size in sizes to count it")
    return sizes[name]


def make_random_codec(out_dir: str | Path, *, seed: int = 0, codebook_size: int = 64,
                      sample_rate_hz: int = 24000, upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2),
                      num_codebooks: tuple[int, ...] = (2, 4, 8), num_filters: int = 4,
                      hidden_size: int = 16) -> Path:
    """Save a tiny, randomly initialised EnCodec (about 170k parameters) for tests and offline demos.

    Its bandwidths are those giving ``num_codebooks`` codebooks (0.9, 1.8, 3.6 kbps by default
    at 75 Hz with 64 codes: ``load_codec`` picks the smallest, Q = 2). Encoding 8 x 1 s takes
    tens of milliseconds on a CPU.

    transformers initialises the RVQ codebooks to zeros, which maps every frame to code 0; here
    each codebook is drawn from encoder frames of dummy speech and noise (the residuals left by
    the codebooks before it), so different audio gives varied codes across the vocabulary.
    Deterministic from ``seed``; leaves the global torch RNG as it was.
    """
    # imported here: torch and transformers take seconds to load, and most tests need neither
    import torch
    from transformers import EncodecConfig, EncodecModel

    hop = int(np.prod(upsampling_ratios))
    frame_rate = math.ceil(sample_rate_hz / hop)  # what EncodecConfig.frame_rate uses for bandwidths
    bits = math.log2(codebook_size)
    bandwidths = [round(q * bits * frame_rate / 1000, 9) for q in num_codebooks]
    config = EncodecConfig(sampling_rate=sample_rate_hz, target_bandwidths=bandwidths,
                           codebook_size=codebook_size, upsampling_ratios=list(upsampling_ratios),
                           num_filters=num_filters, hidden_size=hidden_size, num_lstm_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel(config).eval()
    got = [model.quantizer.get_num_quantizers_for_bandwidth(b) for b in bandwidths]
    if got != list(num_codebooks):
        raise ValueError(f"bandwidths {bandwidths} give {got} codebooks, not {list(num_codebooks)}")

    rng = np.random.default_rng(seed)
    calibration = [dummy_speech(rng, 1.0, sample_rate_hz) * rng.uniform(0.2, 5.0) for _ in range(12)]
    calibration += [0.05 * rng.uniform(0.1, 1.0) * rng.standard_normal(sample_rate_hz).astype(np.float32)
                    for _ in range(4)]
    with torch.no_grad():
        audio = torch.from_numpy(np.stack(calibration))[:, None, :]
        frames = model.encoder(audio)  # (N, D, L)
        # A random encoder's frames sit in a small cloud around a large mean (its last bias): the
        # distances between codewords would then drown in float32 rounding and codes would flip
        # with the batch size. Standardise them by rescaling the last convolution.
        mean, std = frames.mean(dim=(0, 2)), frames.std(dim=(0, 2)) + 1e-8
        last = model.encoder.layers[-1].conv
        last.parametrizations.weight.original0.div_(std[:, None, None])
        last.bias.sub_(mean).div_(std)
        frames = model.encoder(audio)
        residual = frames.permute(0, 2, 1).reshape(-1, frames.shape[1])
        for layer in model.quantizer.layers:
            book = layer.codebook
            picks = rng.choice(len(residual), codebook_size, replace=len(residual) < codebook_size)
            embed = residual[torch.from_numpy(picks)].clone()
            embed += 1e-3 * embed.std() * torch.from_numpy(rng.standard_normal(embed.shape).astype(np.float32))
            book.embed.copy_(embed)
            book.embed_avg.copy_(embed)
            book.cluster_size.fill_(1.0)
            residual = residual - embed[book.quantize(residual)]
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir

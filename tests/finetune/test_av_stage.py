"""Audio-visual extraction: lip frames read with the audio crop, the AV stage, evaluation with own
vs mismatched lips, separation with a mouth-ROI file."""
import json
import shutil

import numpy as np
import pytest
import torch

from hubbub.cli import main
from hubbub.config import ConfigError
from hubbub.evaluate import evaluate_run
from hubbub.finetune import AVStage, finetune_av
from hubbub.models import build_model, load_model, model_config, save_model
from hubbub.separate import separate_file
from hubbub.shards.format import decode_array, is_array_member
from hubbub.shards.reader import ShardDataset
from hubbub.testing import hubbub_launch, make_dummy_corpus
from hubbub.train import load_train_config
from hubbub.video import fit_frames


@pytest.fixture(scope="module")
def av_corpus(tmp_path_factory):
    return make_dummy_corpus(tmp_path_factory.mktemp("av") / "corpus", splits={"train": 8, "valid": 4, "test": 3},
                             seconds=1.0, sample_rate_hz=8000, lips=True)


def _stored_lips(corpus, key):
    """A sample's stored (S, F, 96, 96) lip frames, read straight from its tar."""
    import tarfile

    for tar_path in sorted(corpus.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = [m for m in tar.getnames() if m.startswith(key + ".") and ".lips." in m and is_array_member(m)]
            if names:
                return np.stack([decode_array(n, tar.extractfile(n).read()) for n in sorted(names)])
    raise KeyError(key)


def test_lip_frames_are_cut_with_the_audio_crop(av_corpus):
    """A crop starts on a video frame (320 samples at 8 kHz) and its lips are exactly the frames
    of the cropped audio, centre-cropped to 88x88 for evaluation."""
    ds = ShardDataset(av_corpus, "train", targets=("reverberant", "lips"), crop_s=0.48, shuffle=False,
                      roi_crop="center")
    starts = set()
    for item in ds:
        start = item["start_sample"]
        assert start % 320 == 0
        starts.add(start)
        lips = item["sources"]["lips"]
        assert lips.dtype == torch.uint8 and lips.shape == (2, 12, 88, 88)
        stored = _stored_lips(av_corpus, item["key"])
        first = start // 320
        assert torch.equal(lips, torch.from_numpy(stored[:, first:first + 12, 4:92, 4:92]))
        assert item["mix"].shape[-1] == 0.48 * 8000
    assert len(starts) > 1  # crops do move


def test_random_roi_crops_are_one_offset_per_sample_and_reproducible(av_corpus):
    def crops(seed):
        ds = ShardDataset(av_corpus, "train", targets=("lips",), crop_s=None, shuffle=False, roi_crop="random",
                          seed=seed)
        return {item["key"]: item["sources"]["lips"] for item in ds}

    a, b, c = crops(0), crops(0), crops(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    for key, lips in a.items():
        stored = torch.from_numpy(_stored_lips(av_corpus, key))
        # Some 8x8 offset reproduces every frame of every source: one offset for the whole sample.
        assert any(torch.equal(lips, stored[..., t:t + 88, l:l + 88]) for t in range(9) for l in range(9))


def test_crops_must_hold_whole_video_frames(av_corpus):
    ds = ShardDataset(av_corpus, "train", targets=("lips",), crop_s=0.5, shuffle=False)
    with pytest.raises(ValueError, match="whole number of 25 fps video frames"):
        next(iter(ds))
    with pytest.raises(ValueError, match="roi_crop"):
        ShardDataset(av_corpus, "train", roi_crop="middle")


def test_fit_frames_cuts_or_repeats_the_last_frame():
    frames = torch.arange(3)[:, None, None].expand(3, 2, 2)
    assert fit_frames(frames, 2)[:, 0, 0].tolist() == [0, 1]
    assert fit_frames(frames, 5)[:, 0, 0].tolist() == [0, 1, 2, 2, 2]


def _cfg(corpus, *overrides):
    return load_train_config("av_debug", [f"data.shards={corpus}", "data.crop_s=0.48", "data.batch_size=2",
                                          "steps=4", "ckpt_every=2", "log_every=1", "data.valid_max_samples=3",
                                          *overrides])


def test_av_stage_trains_evaluates_and_resumes(av_corpus, tmp_path):
    run = tmp_path / "run"
    metrics = finetune_av(_cfg(av_corpus), run)
    assert set(metrics) == {"si_snri_db", "si_snri_mismatched_db"}
    assert all(np.isfinite(v) for v in metrics.values())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "extraction_loss" in r]
    assert len(losses) == 4 and all({"vq_loss", "recon_loss"} <= set(r) for r in losses)
    model = load_model(run / "model")
    assert model.spec["name"] == "avextractor" and model.num_sources == 1
    # A run killed after its step-2 checkpoint resumes there and logs the uninterrupted run's losses.
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    shutil.rmtree(resumed / "model")
    finetune_av(_cfg(av_corpus), resumed)
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in again if "extraction_loss" in r] == pytest.approx([r["loss"] for r in losses])


def test_av_stage_starts_from_a_pretrained_glaunet_backbone(av_corpus, tmp_path):
    pretrained = build_model("glaunet", num_sources=2, **model_config("glaunet", "debug"))
    save_model(pretrained, tmp_path / "glaunet")
    stage = AVStage(_cfg(av_corpus, f"init={tmp_path / 'glaunet'}"), tmp_path / "run")
    model = stage.build_model()
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)
    save_model(build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug")), tmp_path / "tasnet")
    with pytest.raises(ConfigError, match="GLA U-Net"):
        AVStage(_cfg(av_corpus, f"init={tmp_path / 'tasnet'}"), tmp_path / "run2").build_model()


def test_av_stage_refuses_a_corpus_without_lips(tmp_path):
    corpus = make_dummy_corpus(tmp_path / "audio_only", seconds=1.0)
    with pytest.raises(ConfigError, match="no lip streams"):
        AVStage(_cfg(corpus), tmp_path / "run")


@pytest.fixture(scope="module")
def av_run(av_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("avrun") / "run"
    assert main(["finetune", "av", "--shards", str(av_corpus), "--config", "av_debug", "--out", str(run),
                 "--set", "steps=2",
                 "--set", "data.crop_s=0.48", "--set", "data.batch_size=2", "--set", "data.valid_max_samples=2"]) == 0
    return run


def test_evaluate_scores_own_and_mismatched_lips(av_run, av_corpus):
    results = evaluate_run(av_run, av_corpus, split="test", metrics=("si_snri",))
    assert results["model"]["audio_visual"] is True
    assert results["overall"]["count"] == 3 and results["mismatched_lips"]["count"] == 3
    assert all(row["perm"] == [0, 1] for row in results["samples"])  # the lips pick the speaker
    own, other = results["overall"]["mean"]["si_snri"], results["mismatched_lips"]["mean"]["si_snri"]
    assert np.isfinite(own) and np.isfinite(other) and own != other
    assert "another utterance's" in (av_run / "eval" / f"{av_corpus.name}-test" / "results.md").read_text()


def test_separate_takes_the_target_speakers_mouth_rois(av_run, tmp_path):
    import soundfile as sf

    from hubbub.testing import dummy_speech

    rng = np.random.default_rng(0)
    wav = tmp_path / "meeting.wav"
    sf.write(wav, dummy_speech(rng, 3.0, 8000) + dummy_speech(rng, 3.0, 8000), 8000)
    lips = tmp_path / "mouth.npy"
    np.save(lips, rng.integers(0, 256, (75, 96, 96), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["separate", str(av_run), str(wav), "--out", str(out), "--lips", str(lips),
                 "--chunk-s", "1.2", "--overlap-s", "0.4"]) == 0
    (path,) = out.glob("*.wav")
    audio, rate = sf.read(path)
    assert rate == 8000 and audio.shape == (24000,) and np.isfinite(audio).all()
    with pytest.raises(ValueError, match="pass the target's mouth ROIs"):
        separate_file(av_run, wav, tmp_path / "none")
    np.save(lips, rng.integers(0, 256, (40, 96, 96), dtype=np.uint8))
    with pytest.raises(ValueError, match="40 frames"):
        separate_file(av_run, wav, tmp_path / "short", lips=lips)


@pytest.mark.slow
def test_av_stage_runs_under_two_processes(av_corpus, tmp_path):
    """DDP over the extractor (video encoder, VQ, reconstruction, fusion: every parameter gets a
    gradient) trains the same global batches as one process. On CPU the lip encoder's BatchNorm
    statistics are per process (PyTorch syncs them on GPUs only), so losses agree only roughly."""
    import os
    import subprocess
    from pathlib import Path

    config = Path(__file__).parents[2] / "cluster" / "accelerate" / "cpu-2proc.yaml"
    common = ["--shards", str(av_corpus), "--config", "av_debug", "--set", "steps=3", "--set", "data.crop_s=0.48",
              "--set", "log_every=1", "--set", "log_sample_keys=true"]
    res = subprocess.run(hubbub_launch(config, "finetune", "av", "--out", str(tmp_path / "two"), *common,
                                       "--set", "data.batch_size=2"),
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_model(tmp_path / "two" / "model").spec["name"] == "avextractor"
    finetune_av(_cfg(av_corpus, "steps=3", "data.batch_size=4", "log_sample_keys=true"), tmp_path / "one")

    def keys(run, files):
        rows = [json.loads(line) for f in files for line in (run / f).read_text().splitlines()]
        return sorted(k for r in rows for k in r["keys"])

    assert keys(tmp_path / "two", ["samples_rank0.jsonl", "samples_rank1.jsonl"]) == \
        keys(tmp_path / "one", ["samples_rank0.jsonl"])
    two = [json.loads(line)["loss"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
           if "extraction_loss" in line]
    one = [json.loads(line)["loss"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
           if "extraction_loss" in line]
    assert len(two) == len(one) == 3 and two[0] == pytest.approx(one[0], rel=0.1)


def test_a_published_av_run_says_it_needs_lips_and_loads(av_run, tmp_path):
    from hubbub.publish import from_pretrained, publish_run

    out = publish_run(av_run, tmp_path / "pub")
    card = (out / "README.md").read_text()
    assert "target-speaker extractor" in card and "--lips" in card
    assert "| av | 2 | reverberant |" in card
    model = from_pretrained(out)
    est = model(torch.zeros(1, 8000), torch.zeros(1, 25, 88, 88, dtype=torch.uint8)).estimates
    assert est.shape == (1, 1, 8000)

import json
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from hubbub.metrics import best_permutation
from hubbub.models import build_model, model_config, save_model
from hubbub.separate import align_sources, load_separator, separate_file, separate_waveform

SR = 8000


class SwappingFilterBank(nn.Module):
    """A fake separator: the mixture low-passed and high-passed (a 9-tap moving average and its
    complement), output in a random order on every call, as a PIT-trained model may do."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.register_buffer("taps", torch.full((1, 1, 9), 1 / 9))
        self.generator = torch.Generator().manual_seed(seed)
        self.swaps: list[bool] = []

    def forward(self, mix):
        low = nn.functional.conv1d(mix[:, None], self.taps, padding=4)
        out = torch.cat([low, mix[:, None] - low], dim=1)
        self.swaps.append(bool(torch.randint(2, (1,), generator=self.generator)))
        return out.flip(1) if self.swaps[-1] else out


def two_tones(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (np.sin(2 * np.pi * 110 * t) + 0.5 * np.sin(2 * np.pi * 2900 * t)).astype(np.float32)


def debug_model(num_sources: int = 2):
    torch.manual_seed(0)
    return build_model("convtasnet", num_sources=num_sources, **model_config("convtasnet", "debug"))


def test_chunked_equals_one_pass_despite_per_chunk_permutations():
    mix = two_tones(30.0)
    model = SwappingFilterBank()
    whole = separate_waveform(model, mix, sample_rate_hz=SR, chunk_s=60.0)
    assert len(model.swaps) == 1
    chunked = separate_waveform(model, mix, sample_rate_hz=SR, chunk_s=4.0, overlap_s=1.0)
    swaps = model.swaps[1:]
    assert len(swaps) == 10 and any(swaps) and not all(swaps), "the test needs both orders"
    # The chunks differ from one pass only within 4 samples of their ends, where the cross-fade
    # weight is ~1e-5: away from them (and everywhere, to that weight) the results agree.
    np.testing.assert_allclose(chunked[best_permutation(chunked, whole)], whole, atol=1e-4)


def test_align_sources_matches_by_shape_not_loudness():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 500))
    previous = np.stack([a, 0.01 * b])
    assert align_sources(previous, np.stack([100 * b, a])).tolist() == [1, 0]
    assert align_sources(previous, np.stack([a, b])).tolist() == [0, 1]


@pytest.mark.parametrize("seconds", [0.3, 8.0, 8.001, 9.5, 21.7])
def test_output_length_equals_input_length(seconds):
    mix = np.random.default_rng(0).standard_normal(round(seconds * SR)).astype(np.float32)
    out = separate_waveform(debug_model(3), mix, sample_rate_hz=SR, chunk_s=8.0, overlap_s=2.0)
    assert out.shape == (3, len(mix)) and out.dtype == np.float32 and np.isfinite(out).all()


def test_short_input_is_one_model_pass_and_mode_is_restored():
    model = debug_model().train()
    mix = torch.randn(1, 3 * SR)  # (C, T): channel 0 is separated
    out = separate_waveform(model, mix, sample_rate_hz=SR)
    assert model.training, "train mode restored"
    with torch.no_grad():
        np.testing.assert_allclose(out, model.eval()(mix)[0].numpy(), atol=1e-6)


class Identity(nn.Module):
    def forward(self, mix):
        return mix[:, None]  # a view of the input


def test_the_input_is_never_modified():
    mix = two_tones(5.0)
    before = mix.copy()
    out = separate_waveform(Identity(), mix, sample_rate_hz=SR, chunk_s=2.0, overlap_s=0.5)
    np.testing.assert_array_equal(mix, before)
    np.testing.assert_allclose(out[0], mix, atol=1e-6)  # the cross-fades sum to 1


@pytest.mark.parametrize("chunk_s, overlap_s", [(8.0, 0.0), (8.0, 4.5), (2.0, -1.0)])
def test_bad_overlap_is_refused(chunk_s, overlap_s):
    with pytest.raises(ValueError, match="overlap_s"):
        separate_waveform(debug_model(), np.zeros(SR), sample_rate_hz=SR, chunk_s=chunk_s, overlap_s=overlap_s)


def _peak_bytes(model, mix, **kwargs) -> tuple[int, int]:
    """(numpy peak via tracemalloc, torch CPU peak via the profiler's allocation events)."""
    tracemalloc.start()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            separate_waveform(model, mix, sample_rate_hz=SR, **kwargs)
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    return numpy_peak, int(np.cumsum([e.nbytes() for e in events]).max())


def test_two_minutes_run_in_bounded_memory():
    model = debug_model()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True):  # first use: imports, buffers
        separate_waveform(model, np.zeros(SR, np.float32), sample_rate_hz=SR)
    rng = np.random.default_rng(0)
    short, long = (rng.standard_normal(s * SR).astype(np.float32) for s in (20, 120))
    numpy_short, torch_short = _peak_bytes(model, short)
    numpy_long, torch_long = _peak_bytes(model, long)
    # The model's activations are one chunk's, whatever the length...
    assert torch_long <= 1.1 * torch_short
    # ...and what grows on the numpy side is the (2, T) float32 output, nothing else.
    output_growth = 2 * (len(long) - len(short)) * 4
    assert numpy_long - numpy_short <= 1.1 * output_growth
    # The measurement does see activations: one 20 s pass holds more than a chunk's.
    assert _peak_bytes(model, short, chunk_s=30.0, overlap_s=1.0)[1] > 1.5 * torch_short


def test_separate_file_from_a_run_resamples_and_writes_one_wav_per_source(tmp_path):
    run = tmp_path / "run"
    model = debug_model()
    save_model(model, run / "model")
    (run / "run.json").write_text(json.dumps({"sample_rate_hz": SR}))
    stereo_16k = np.stack([np.resize(two_tones(1.0), 2 * SR * 2)] * 2, axis=1) * 0.5
    sf.write(tmp_path / "talk.flac", stereo_16k, 2 * SR)

    paths = separate_file(run, tmp_path / "talk.flac", tmp_path / "out", chunk_s=1.0, overlap_s=0.25)
    assert [p.name for p in paths] == ["talk_s0.wav", "talk_s1.wav"]
    for p in paths:
        info = sf.info(p)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (SR, 2 * SR, 1, "FLOAT")
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_bare_model_dir_needs_a_sample_rate(tmp_path):
    save_model(debug_model(), tmp_path / "model")
    with pytest.raises(ValueError, match="sample_rate_hz"):
        load_separator(tmp_path / "model")
    model, rate = load_separator(tmp_path / "model", sample_rate_hz=16000)
    assert rate == 16000 and not model.training

"""Properties of the RIR engine: fast mode reproduces pra's full image-source model, and every
mode shares pra's time axis minus its fractional-delay offset."""
import numpy as np
import pyroomacoustics as pra
import pytest
from scipy.signal import coherence

from hubbub.simulate.rir import (RirSet, _synthesize, compute_rirs, direct_to_reverberant_db, measure_rt60_s,
                                 rt60_to_absorption)
from hubbub.sources.noise import diffuse_coherence_root

ROOM = [6.0, 5.0, 3.0]
SOURCES = [[1.5, 1.2, 1.6], [4.2, 3.1, 1.4]]
MICS = [[3.0, 2.5, 1.5], [3.05, 2.5, 1.5]]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _random_room(rng, rt60_range_s):
    """A random room whose RT60 is possible, with one source and two mics >= 0.5 m from walls."""
    while True:
        dims = rng.uniform([3.0, 3.0, 2.5], [10.0, 10.0, 4.0])
        rt60 = rng.uniform(*rt60_range_s)
        try:
            rt60_to_absorption(rt60, dims)
        except ValueError:
            continue
        return dims, rt60, rng.uniform(0.5, dims - 0.5, (1, 3)), rng.uniform(0.5, dims - 0.5, (2, 3))


@pytest.mark.slow
def test_fast_reproduces_full_rt60_and_drr():
    """60 random rooms (3-10 x 3-10 x 2.5-4 m, RT60 0.2-0.6 s, 1 source and 2 mics >= 0.5 m from
    the walls), at 8 kHz and RT60 <= 0.6 s to keep pra's full model affordable (~10 s of CPU):
    fast-mode RIRs have the RT60 and the direct-to-reverberant ratio of full-mode ones."""
    fs = 8000
    rng = _rng(2024)
    rt60_error, drr_error = [], []
    for room in range(60):
        dims, rt60, sources, mics = _random_room(rng, (0.2, 0.6))
        full = compute_rirs(dims, rt60, sources, mics, fs, mode="full", rng=_rng(room))
        fast = compute_rirs(dims, rt60, sources, mics, fs, mode="fast", rng=_rng(room))
        for m in range(len(mics)):
            rt60_error.append(measure_rt60_s(fast.rirs[0, m], fs) / measure_rt60_s(full.rirs[0, m], fs) - 1.0)
            delay = full.direct_delay_samples[0, m]
            drr_error.append(direct_to_reverberant_db(fast.rirs[0, m], delay, fs)
                             - direct_to_reverberant_db(full.rirs[0, m], delay, fs))
    rt60_error, drr_error = np.array(rt60_error), np.array(drr_error)
    assert np.all(np.isfinite(rt60_error)) and np.all(np.isfinite(drr_error))
    assert np.median(np.abs(rt60_error)) < 0.10
    assert abs(np.median(rt60_error)) < 0.05          # and no systematic bias
    assert np.median(np.abs(drr_error)) < 1.0
    assert abs(np.median(drr_error)) < 0.5


def test_full_mode_is_pras_plain_path_without_its_offset():
    """full == ShoeBox(max_order from inverse Sabine).compute_rir(), 40 samples earlier; with pra's
    high-pass off, since we apply it to the reflections only."""
    fs = 16000
    absorption, order = rt60_to_absorption(0.3, ROOM)
    default = pra.constants.get("rir_hpf_enable")
    pra.constants.set("rir_hpf_enable", False)
    try:
        ours = compute_rirs(ROOM, 0.3, SOURCES, MICS, fs, mode="full", rng=_rng(), truncate_db=300.0)
        room = pra.ShoeBox(ROOM, fs=fs, materials=pra.Material(absorption), max_order=order)
        for s in SOURCES:
            room.add_source(s)
        room.add_microphone(np.array(MICS).T)
        room.compute_rir()
    finally:
        pra.constants.set("rir_hpf_enable", default)
    offset = pra.constants.get("frac_delay_length") // 2
    for s in range(len(SOURCES)):
        for m in range(len(MICS)):
            theirs = room.rir[m][s][offset:]
            n = min(len(theirs), ours.rirs.shape[-1])
            np.testing.assert_allclose(ours.rirs[s, m, :n], theirs[:n], atol=1e-6 * np.abs(theirs).max())


def test_fast_without_tail_equals_full():
    """Once early_order reaches the full order there is nothing left for the tail: fast mode's
    batched pulse building gives pra's RIRs."""
    full = compute_rirs(ROOM, 0.2, SOURCES, MICS, 16000, mode="full", rng=_rng())
    fast = compute_rirs(ROOM, 0.2, SOURCES, MICS, 16000, mode="fast", rng=_rng(), early_order=1000)
    assert fast.max_order == fast.full_order == full.max_order
    assert fast.rirs.shape == full.rirs.shape
    np.testing.assert_allclose(fast.rirs, full.rirs, atol=1e-4 * np.abs(full.rirs).max())


def test_same_seed_same_rirs_other_seed_other_tail():
    a = compute_rirs(ROOM, 0.5, SOURCES, MICS, 16000, rng=_rng(7))
    b = compute_rirs(ROOM, 0.5, SOURCES, MICS, 16000, rng=_rng(7))
    c = compute_rirs(ROOM, 0.5, SOURCES, MICS, 16000, rng=_rng(8))
    np.testing.assert_array_equal(a.rirs, b.rirs)
    n = min(a.rirs.shape[-1], c.rirs.shape[-1])
    assert not np.allclose(a.rirs[..., :n], c.rirs[..., :n])
    # the exact part (direct path and first reflections, ~10 ms here) does not depend on the seed
    np.testing.assert_allclose(a.rirs[..., :160], c.rirs[..., :160], atol=1e-6)
    np.testing.assert_array_equal(a.direct, c.direct)


@pytest.mark.parametrize("mode", ["full", "fast", "anechoic"])
def test_direct_path_peaks_at_its_delay(mode):
    rs = compute_rirs(ROOM, 0.4, SOURCES, MICS, 16000, mode=mode, rng=_rng())
    distance = np.linalg.norm(np.array(SOURCES)[:, None] - np.array(MICS)[None], axis=-1)
    np.testing.assert_allclose(rs.direct_delay_samples, distance / 343.0 * 16000)
    assert rs.rirs.dtype == rs.direct.dtype == np.float32
    for s in range(2):
        for m in range(2):
            delay = rs.direct_delay_samples[s, m]
            assert abs(np.argmax(np.abs(rs.direct[s, m])) - delay) <= 0.5
            # a fractional-delay pulse: its energy, not its peak, is that of gain 1/distance
            np.testing.assert_allclose(np.sum(rs.direct[s, m] ** 2), distance[s, m] ** -2.0, rtol=0.03)
            window = np.abs(rs.rirs[s, m, : int(delay) + 40])       # direct path +- 2.5 ms
            assert abs(np.argmax(window) - delay) <= 0.5


def test_anechoic_is_the_direct_path_and_ignores_rt60():
    rs = compute_rirs(ROOM, 0.0, SOURCES, MICS, 16000, mode="anechoic", rng=_rng())
    np.testing.assert_array_equal(rs.rirs, rs.direct)
    assert (rs.mode, rs.max_order, rs.full_order, rs.absorption) == ("anechoic", 0, 0, 1.0)
    assert direct_to_reverberant_db(rs.rirs[0, 0], rs.direct_delay_samples[0, 0], 16000) == np.inf
    # same pulses as the other modes
    fast = compute_rirs(ROOM, 0.5, SOURCES, MICS, 16000, rng=_rng())
    np.testing.assert_allclose(fast.direct, rs.direct)


def test_early_keeps_the_direct_path_and_nothing_after_50_ms():
    rs = compute_rirs(ROOM, 0.6, SOURCES, MICS, 16000, rng=_rng())
    early = rs.early(50.0)
    end = rs.direct_delay_samples + 0.05 * 16000
    assert early.shape[:2] == rs.rirs.shape[:2] and early.dtype == np.float32
    assert early.shape[-1] == int(np.ceil(end.max())) + 1
    for s in range(2):
        for m in range(2):
            keep = int(end[s, m] - 0.005 * 16000)          # before the 5 ms fade
            np.testing.assert_array_equal(early[s, m, :keep], rs.rirs[s, m, :keep])
            assert np.all(early[s, m, int(np.ceil(end[s, m])):] == 0.0)
            fade = np.abs(early[s, m, keep:]) <= np.abs(rs.rirs[s, m, keep: early.shape[-1]]) + 1e-9
            assert fade.all()
    with pytest.raises(ValueError):
        rs.early(0.0)


def test_impossible_rt60_is_a_clear_error():
    with pytest.raises(ValueError, match="impossible.*fully absorbing walls give 0.1"):
        rt60_to_absorption(0.05, ROOM)
    with pytest.raises(ValueError, match="impossible"):
        compute_rirs([10, 10, 4], 0.1, SOURCES, MICS, 16000, rng=_rng())
    with pytest.raises(ValueError, match="> 0"):
        rt60_to_absorption(0.0, ROOM)
    absorption, order = rt60_to_absorption(0.5, ROOM)
    assert (absorption, order) == pra.inverse_sabine(0.5, ROOM)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="inside"):
        compute_rirs(ROOM, 0.3, [[7.0, 1.0, 1.0]], MICS, 16000, rng=_rng())
    with pytest.raises(ValueError, match="mode"):
        compute_rirs(ROOM, 0.3, SOURCES, MICS, 16000, mode="exact", rng=_rng())
    with pytest.raises(ValueError, match="room_dim_m"):
        compute_rirs([6.0, 5.0], 0.3, SOURCES, MICS, 16000, rng=_rng())


@pytest.mark.parametrize("mode", ["full", "fast"])
def test_truncation_keeps_all_but_a_trace_of_the_energy(mode):
    # early_order=1000: fast without a tail, so that both lengths share one RIR
    kwargs = {"mode": "full"} if mode == "full" else {"mode": "fast", "early_order": 1000}
    cut = compute_rirs(ROOM, 0.3, SOURCES, MICS, 16000, rng=_rng(), **kwargs)
    whole = compute_rirs(ROOM, 0.3, SOURCES, MICS, 16000, rng=_rng(), truncate_db=300.0, **kwargs)
    assert cut.rirs.shape[-1] < whole.rirs.shape[-1]
    kept = (cut.rirs.astype(float) ** 2).sum(-1) / (whole.rirs.astype(float) ** 2).sum(-1)
    assert np.all(kept >= 0.9999)


def test_fast_and_full_are_about_as_long():
    """Both cut at -80 dB of their own decay: similar lengths mean similar late decays."""
    rng = _rng(5)
    ratios = []
    for room in range(8):
        dims, rt60, sources, mics = _random_room(rng, (0.2, 0.5))
        full = compute_rirs(dims, rt60, sources, mics, 8000, mode="full", rng=_rng(room))
        fast = compute_rirs(dims, rt60, sources, mics, 8000, rng=_rng(room))
        ratios.append(fast.rirs.shape[-1] / full.rirs.shape[-1])
    assert 0.8 < np.median(ratios) < 1.25


def test_tail_is_diffuse_across_mics():
    """Late reverberation at mics 3 cm apart is coherent at low frequencies, 3 m apart it is not."""
    fs = 16000
    mics = [[3.0, 2.5, 1.5], [3.03, 2.5, 1.5], [3.0, 4.5, 1.5]]
    rs = compute_rirs([8.0, 7.0, 3.0], 1.0, [[1.0, 1.0, 1.5]], mics, fs, rng=_rng())
    late = rs.rirs[0, :, int(0.1 * fs):].astype(float)
    f, near = coherence(late[0], late[1], fs=fs, nperseg=512)
    _, far = coherence(late[0], late[2], fs=fs, nperseg=512)
    low = (f > 50) & (f < 500)
    assert near[low].mean() > 0.8
    assert far[low].mean() < 0.3


@pytest.mark.parametrize("spacing_m", [0.15, 1.0, 3.0])
def test_diffuse_tail_keeps_its_power_at_any_mic_spacing(spacing_m):
    """Mixing the tail's frames for the diffuse coherence changes the mics' correlation, not their
    power: each mic gets the model's power whatever the spacing (a mixing matrix that jumps
    across frequency lost 2% of it at 15 cm and 35% at 3 m)."""
    fs, n_fft = 16000, 256
    psd = np.ones((n_fft // 2 + 1, 300))
    mics = np.array([[1.0, 1.0, 1.0], [1.0 + spacing_m, 1.0, 1.0]])
    tail = _synthesize(psd, mics, 4, n_fft, 343.0, fs, _rng())[..., n_fft:-n_fft]
    np.testing.assert_allclose((tail ** 2).mean(axis=(0, 2)), 1.0, atol=0.015)


def test_diffuse_coherence_root_is_the_coherence_and_continuous():
    mics = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.4, 0.0], [0.5, 0.5, 0.1]])
    freqs = np.linspace(0, 8000, 4001)
    root = diffuse_coherence_root(freqs, mics)
    d = np.linalg.norm(mics[:, None] - mics[None], axis=-1)
    np.testing.assert_allclose(root @ np.swapaxes(root, 1, 2), np.sinc(2 * freqs[:, None, None] * d / 343.0),
                               atol=1e-9)
    # 2 Hz apart, no entry moves by more than the coherence itself allows: no jumps where
    # eigenvalues cross (an eigenvector basis V sqrt(L) flips there)
    assert np.abs(np.diff(root, axis=0)).max() < 0.05


def test_measure_rt60_of_an_exponential_decay():
    fs = 16000
    t = np.arange(int(1.5 * fs)) / fs
    h = _rng().standard_normal(t.size) * 10 ** (-3 * t / 0.5)      # -60 dB of energy at 0.5 s
    assert measure_rt60_s(h, fs) == pytest.approx(0.5, rel=0.05)
    assert np.isnan(measure_rt60_s(np.zeros(100), fs))
    assert np.isnan(measure_rt60_s([], fs))


def test_fields_describe_the_room():
    rs = compute_rirs(ROOM, 0.3, SOURCES, MICS, 8000, rng=_rng())
    assert isinstance(rs, RirSet)
    assert (rs.mode, rs.sample_rate_hz, rs.max_order) == ("fast", 8000, 4)
    assert rs.full_order == rt60_to_absorption(0.3, ROOM)[1]
    assert rs.direct_delay_samples.dtype == np.float64

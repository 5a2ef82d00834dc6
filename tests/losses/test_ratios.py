import doctest
import math

import numpy as np
import pytest
import torch

import hubbub.losses.ratios
from hubbub.losses import SI_SNR_FLOOR_DB, absent_source_loss, neg_si_snr, neg_snr, si_snr, snr


def signals(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def eps_only_si_snr(est, ref, eps=1e-8):
    """SI-SNR as it was before silence got the floor: eps in both energies, nothing else."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / ((est - target).pow(2).sum(-1) + eps))


def at_si_snr(ref, db, seed=1):
    """An estimate of exactly ``db`` dB SI-SNR: ref plus noise orthogonal to it, scaled."""
    ref = ref - ref.mean(-1, keepdim=True)
    noise = signals(*ref.shape, seed=seed, dtype=ref.dtype)
    noise = noise - noise.mean(-1, keepdim=True)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    gain = (ref.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10 ** (db / 10)).sqrt()
    return ref + gain * noise


def numpy_si_snr(est, ref):
    """Through the correlation coefficient ρ of the zero-mean signals: 10 log10(ρ² / (1 - ρ²))."""
    est = est - est.mean(-1, keepdims=True)
    ref = ref - ref.mean(-1, keepdims=True)
    rho2 = np.sum(est * ref, -1) ** 2 / (np.sum(est**2, -1) * np.sum(ref**2, -1))
    return 10 * np.log10(rho2 / (1 - rho2))


def test_docstring_examples():
    assert doctest.testmod(hubbub.losses.ratios).failed == 0


def test_si_snr_matches_an_independent_formula():
    ref = signals(3, 2, 4000)
    est = ref + 0.5 * signals(3, 2, 4000, seed=1) + 0.1
    expected = numpy_si_snr(est.double().numpy(), ref.double().numpy())
    np.testing.assert_allclose(si_snr(est, ref).numpy(), expected, atol=1e-3)
    assert si_snr(est, ref).shape == (3, 2)


def test_si_snr_of_a_signal_against_itself_is_huge():
    ref = 0.05 * signals(2, 3, 8000)  # quiet: energy ~20, so eps matters most here
    assert (si_snr(ref, ref) >= 80).all()
    assert (si_snr(-0.3 * ref, ref) >= 80).all()


@pytest.mark.parametrize("est_scale, ref_scale", [(0.01, 1.0), (1.0, 50.0), (-3.0, 0.2)])
def test_si_snr_is_scale_invariant(est_scale, ref_scale):
    ref = signals(2, 2, 4000)
    est = ref + signals(2, 2, 4000, seed=1)
    torch.testing.assert_close(si_snr(est_scale * est, ref_scale * ref), si_snr(est, ref), atol=1e-4, rtol=0)


def test_snr_matches_its_formula():
    ref = signals(2, 3, 4000, dtype=torch.float64)
    est = ref + 0.3 * signals(2, 3, 4000, seed=1, dtype=torch.float64)
    r, e = ref.numpy(), est.numpy()
    err, energy = np.sum((r - e) ** 2, -1), np.sum(r**2, -1)
    np.testing.assert_allclose(snr(est, ref).numpy(), 10 * np.log10(energy / err), atol=1e-6)
    np.testing.assert_allclose(snr(est, ref, tau=0.01).numpy(), 10 * np.log10(energy / (err + 0.01 * energy)),
                               atol=1e-6)


def test_snr_with_tau_saturates_at_30_db():
    tau = 10 ** (-30 / 10)
    ref = signals(4, 2, 4000)
    torch.testing.assert_close(snr(ref, ref, tau=tau), torch.full((4, 2), 30.0), atol=1e-4, rtol=0)
    # At 40 dB plain SNR the threshold already costs 0.4 dB: 10 log10(1 / (1e-4 + 1e-3)).
    est = ref + 0.01 * signals(4, 2, 4000, seed=1)
    assert torch.allclose(snr(est, ref), torch.tensor(40.0), atol=0.2)
    torch.testing.assert_close(snr(est, ref, tau=tau), torch.full((4, 2), -10 * math.log10(1.1e-3)),
                               atol=0.05, rtol=0)
    for level in (1e-4, 1e-2, 1.0):
        assert (snr(ref + level * signals(4, 2, 4000, seed=2), ref, tau=tau) <= 30 + 1e-4).all()


@pytest.mark.parametrize("loss_fn", [neg_si_snr, neg_snr, lambda e, r: neg_snr(e, r, tau=1e-3)],
                         ids=["si_snr", "snr", "snr_tau"])
def test_a_signal_against_itself_has_the_lowest_loss(loss_fn):
    ref = signals(1, 1, 4000)
    best = loss_fn(ref, ref)
    perturbations = [signals(1, 1, 4000, seed=1) * level for level in (1e-3, 1e-2, 0.1, 1.0)]
    perturbations += [torch.roll(ref, 1, -1) - ref, 0.1 * torch.ones_like(ref)]
    for delta in perturbations:
        assert loss_fn(ref + delta, ref) > best
    est = ref.clone().requires_grad_()
    loss_fn(est, ref).sum().backward()
    # A minimum: the gradient vanishes there, but for SI-SNR only across the scale direction (eps
    # makes a louder perfect estimate marginally better).
    grad = est.grad
    if loss_fn is neg_si_snr:
        grad = grad - (grad * ref).sum() / (ref * ref).sum() * ref
    assert grad.abs().max() < 1e-4


def test_zero_signals_give_finite_values_and_gradients():
    x = signals(2, 2, 1000)
    zero = torch.zeros_like(x)
    for est_value, ref in [(zero, zero), (x, zero), (zero, x)]:
        for fn in (si_snr, snr, lambda e, r: snr(e, r, tau=1e-3), lambda e, r: absent_source_loss(e, r)):
            est = est_value.clone().requires_grad_()
            value = fn(est, ref)
            value.sum().backward()
            assert value.isfinite().all() and est.grad.isfinite().all()


def test_low_precision_inputs_are_computed_in_float32():
    ref, est = signals(2, 2, 4000), signals(2, 2, 4000, seed=1)
    for fn in (si_snr, snr):
        out = fn(est.bfloat16(), ref.bfloat16())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(est.bfloat16().float(), ref.bfloat16().float()))
        assert fn(est.double(), ref.double()).dtype == torch.float64


def test_absent_source_loss_is_relative_to_the_mixture():
    mix = signals(2, 4000)
    est = 0.1 * signals(2, 3, 4000, seed=1)
    torch.testing.assert_close(absent_source_loss(7 * est, 7 * mix[:, None]), absent_source_loss(est, mix[:, None]))
    floor = absent_source_loss(torch.zeros_like(est), mix[:, None], tau=1e-3)
    torch.testing.assert_close(floor, torch.full((2, 3), -30.0))
    assert (absent_source_loss(est, mix[:, None]) > floor).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_silent_estimate_reads_the_floor_below_any_real_estimate(dtype):
    ref = signals(3, 4000, dtype=torch.float64)
    silent = {"zero": torch.zeros_like(ref), "constant": torch.full_like(ref, 0.3)}
    for name, est in silent.items():
        value = si_snr(est.to(dtype), ref.to(dtype))
        assert torch.equal(value, torch.full((3,), SI_SNR_FLOOR_DB, dtype=value.dtype)), name
    # eps alone gave silence 0 dB, above these real, poor estimates: now they all beat it.
    for db in (-5.0, -20.0, -40.0):
        est = at_si_snr(ref, db)
        assert (si_snr(est.to(dtype), ref.to(dtype)) > SI_SNR_FLOOR_DB + 50).all()
        torch.testing.assert_close(si_snr(est, ref), torch.full((3,), db, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (si_snr(ref, torch.zeros_like(ref)) == SI_SNR_FLOOR_DB).all()  # against silence too


def test_the_value_fades_to_the_floor_as_the_energy_drops_below_eps():
    ref = signals(4000, dtype=torch.float64)
    est = at_si_snr(ref, -5.0)
    energy = est.pow(2).sum()
    levels = [(e / energy).sqrt() for e in (1e-2, 1e-4, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-12, 1e-16)]
    values = [si_snr(level * est, ref).item() for level in levels]
    # Audible: the true value, within (eps / energy) * 100 dB.
    assert values[:2] == pytest.approx([-5.0, -5.0], abs=0.01)
    assert values == sorted(values, reverse=True)                    # quieter, never better
    assert values[4] == pytest.approx((-5.0 + SI_SNR_FLOOR_DB) / 2, abs=2)  # at eps: halfway, in dB
    assert values[-1] == pytest.approx(SI_SNR_FLOOR_DB, abs=1e-6)    # far below eps: silence
    assert min(values) >= SI_SNR_FLOOR_DB


def test_silence_has_finite_gradients_and_audible_estimates_keep_theirs():
    ref = signals(2, 2, 4000)
    zero = torch.zeros_like(ref).requires_grad_()
    value = si_snr(zero, ref)
    value.sum().backward()
    assert torch.equal(value, torch.full((2, 2), SI_SNR_FLOOR_DB))
    assert zero.grad.isfinite().all()

    # Through the fade from silence to audible, gradients stay finite and bounded.
    for scale in (1e-12, 1e-9, 1e-7, 1e-6, 3e-6, 1e-5, 1e-4):
        est = (scale * at_si_snr(ref, 0.0)).requires_grad_()
        si_snr(est, ref).sum().backward()
        assert est.grad.isfinite().all() and est.grad.norm(dim=-1).max() < 1e6, scale

    # A quiet but real estimate (energy ~1e-1, 1e7 eps) keeps its value and its gradient (in
    # float64, so that float32 rounding does not hide a change).
    ref = ref.double()
    for db in (-5.0, 10.0):
        est = (3e-3 * at_si_snr(ref, db)).requires_grad_()
        old = est.detach().clone().requires_grad_()
        value, old_value = si_snr(est, ref), eps_only_si_snr(old, ref)
        value.sum().backward()
        old_value.sum().backward()
        torch.testing.assert_close(value, old_value, atol=1e-4, rtol=0)
        torch.testing.assert_close(est.grad, old.grad, rtol=1e-5, atol=1e-5 * old.grad.abs().max().item())

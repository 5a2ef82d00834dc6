import doctest
import math

import numpy as np
import pytest
import torch

import hubbub.losses.ratios
from hubbub.losses import absent_source_loss, neg_si_snr, neg_snr, si_snr, snr


def signals(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


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

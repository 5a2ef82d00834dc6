"""Signal-to-noise ratios in dB as differentiable torch functions, and their negatives as losses.

Every function reduces the last (time) axis and broadcasts the others, so ``(B, S, T)`` inputs give
``(B, S)`` and ``est[:, :, None]`` against ``ref[:, None]`` gives the ``(B, S_est, S_ref)`` matrix
of every pair (see :func:`hubbub.losses.pairwise_loss_matrix`). Inputs of lower precision (bf16,
fp16) are computed in float32: bf16 carries 8 significant bits (a 40 dB SI-SNR would come out in
0.25 dB steps, and residual energies with them), and an fp16 energy overflows past 65504, i.e. a
few seconds of loud audio. float64 inputs stay float64.

All of them are finite, with finite gradients, for all-zero estimates and references: ``eps``
(an absolute energy, negligible against any audible signal of a few ms) keeps every log and
division away from 0/0.

Silence: SI-SNR has no value for a silent estimate (the scale that best fits it to the reference
is 0, and target and noise vanish together; eps alone makes it read 0 dB), so :func:`si_snr`
gives it :data:`SI_SNR_FLOOR_DB` (-100 dB), its lowest value: a silent output never scores above,
nor wins a PIT assignment over, a real estimate above the floor. SNR needs no such convention: a
silent estimate reads 0 dB, its true value (the error is the whole reference), and loses to any
estimate closer to the reference than silence is.
"""
from __future__ import annotations

import torch

#: SI-SNR of a silent estimate (or against a silent reference), and the lowest SI-SNR, in dB. The
#: same as the clip of BSS-eval SDR in :mod:`hubbub.metrics` (``-SDR_LIMIT_DB``), so a silent output
#: reads -100 dB under both, in training as in evaluation.
SI_SNR_FLOOR_DB = -100.0


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _energy(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(-1)


def si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8, zero_mean: bool = True) -> torch.Tensor:
    """Scale-invariant SNR (Le Roux et al. 2019, "SDR - half-baked or well done?") in dB.

    The estimate is split into its projection on the reference, ``target = <est, ref> / ||ref||² ref``,
    and the rest, ``noise = est - target``; SI-SNR = ``10 log10(||target||² / ||noise||²)``. Scaling
    the estimate or the reference does not change it.

    Args:
        est: estimates, (..., T); any float dtype.
        ref: references, broadcastable against ``est``.
        eps: absolute energy added to both energies and to ``||ref||²``, so that zero signals give
            finite values: a perfect estimate of a reference of energy E reads ``10 log10(E / eps)``
            (about 100 dB for a second of speech at -25 dBFS and 16 kHz). It is also the energy
            below which a signal counts as silent (see Returns).
        zero_mean: remove each signal's mean over T first (the usual definition; makes the value
            blind to DC offsets, and a constant estimate silent).

    Returns:
        (...) SI-SNR in dB, float32 (float64 for float64 inputs), clamped at
        :data:`SI_SNR_FLOOR_DB` (-100 dB; the clamp, with a zero gradient, only catches estimates
        whose projection on the reference holds under 1e-10 of their energy). A silent estimate
        (all zero, or constant with ``zero_mean``) reads exactly the floor, and so does any
        estimate against a silent reference. In between, the value fades from the ratio above to
        the floor linearly in ``w = E_est / (E_est + eps) * E_ref / (E_ref + eps)`` (halfway, in
        dB, at an energy of ``eps``), which moves an audible estimate's value by about
        ``eps / E * 100`` dB and its gradient by a relative ``eps / E`` only, and keeps the
        gradient finite everywhere: 0 at an all-zero estimate, under 1e6 in norm through the fade
        (eps alone gives up to about 5e4 there).

    Example::

        >>> x = torch.randn(4, 2, 16000)
        >>> si_snr(0.5 * x, x).shape, bool((si_snr(0.5 * x, x) > 80).all())
        (torch.Size([4, 2]), True)
        >>> si_snr(torch.zeros(16000), x[0, 0])       # silence: the floor, below any real estimate
        tensor(-100.)
    """
    est, ref = _at_least_float32(est), _at_least_float32(ref)
    if zero_mean:
        est = est - est.mean(-1, keepdim=True)
        ref = ref - ref.mean(-1, keepdim=True)
    est_energy, ref_energy = _energy(est), _energy(ref)
    scale = (est * ref).sum(-1, keepdim=True) / (ref_energy.unsqueeze(-1) + eps)
    target = scale * ref
    # The residual is a difference of signals, not ||est||² - ||target||²: that difference of two
    # nearly equal energies cancels to float32 rounding noise for good estimates.
    noise = est - target
    ratio_db = 10 * torch.log10((_energy(target) + eps) / (_energy(noise) + eps))
    # eps alone sends a silent estimate to 0 dB (target and noise vanish together), above every
    # real estimate below 0 dB. The fade to the floor is linear in energy, not in dB: a log of the
    # energy would put gradients of ~1/sqrt(eps * 1e-10) near silence.
    audible = est_energy / (est_energy + eps) * (ref_energy / (ref_energy + eps))
    return (SI_SNR_FLOOR_DB + audible * (ratio_db - SI_SNR_FLOOR_DB)).clamp(min=SI_SNR_FLOOR_DB)


def snr(est: torch.Tensor, ref: torch.Tensor, tau: float | None = None, eps: float = 1e-8) -> torch.Tensor:
    """SNR in dB, optionally with the soft threshold of Wisdom et al. 2020 (MixIT).

    ``10 log10(||ref||² / (||ref - est||² + tau ||ref||²))``. The ``tau ||ref||²`` term caps the
    value at ``-10 log10(tau)`` dB (tau = 1e-3 → 30 dB), so that examples already separated well
    stop dominating the gradient and those still poor get the training signal.

    Args:
        est: estimates, (..., T).
        ref: references, broadcastable against ``est``.
        tau: soft threshold, ``10 ** (-max_snr_db / 10)``; None (or 0) is the plain SNR.
        eps: absolute energy added to numerator and denominator (finite values for zero signals).

    Returns:
        (...) SNR in dB, float32 (float64 for float64 inputs).

    Example::

        >>> x = torch.randn(2, 3, 8000)
        >>> snr(x, x, tau=1e-3).round(decimals=3)      # saturates: a perfect estimate reads 30 dB
        tensor([[30., 30., 30.],
                [30., 30., 30.]])
    """
    est, ref = _at_least_float32(est), _at_least_float32(ref)
    ref_energy = _energy(ref)
    floor = eps if not tau else tau * ref_energy + eps
    return 10 * torch.log10((ref_energy + eps) / (_energy(ref - est) + floor))


def absent_source_loss(est: torch.Tensor, mix: torch.Tensor, tau: float = 1e-3, eps: float = 1e-8) -> torch.Tensor:
    """Loss in dB for an estimate whose reference is absent (all zero): its energy relative to the mix.

    ``10 log10((||est||² + tau ||mix||²) / ||mix||²)``, the zero-reference term of Wisdom et al.
    2020 divided by the mixture energy. The division only shifts the value by a per-mixture
    constant (gradients and assignments are unchanged) but makes it scale-invariant and puts it
    on the same footing as ``-snr(..., tau)``: both bottom out at ``10 log10(tau)`` (-30 dB for
    tau = 1e-3), reached here once the estimate is ~30 dB quieter than the mixture. Below that the
    gradient vanishes, so driving a silent output further down never outweighs separating the
    present sources.

    Args:
        est: estimates, (..., T).
        mix: the mixture, broadcastable against ``est`` (e.g. ``mix[:, None]`` for (B, S, T) est).
        tau: floor relative to the mixture energy; 0 leaves only ``eps``.
        eps: absolute energy that keeps a silent mixture finite.

    Returns:
        (...) loss in dB (lower is better).

    Example::

        >>> mix = torch.randn(2, 8000)
        >>> absent_source_loss(torch.zeros(2, 3, 8000), mix[:, None]).round(decimals=3)  # the floor
        tensor([[-30., -30., -30.],
                [-30., -30., -30.]])
    """
    est, mix = _at_least_float32(est), _at_least_float32(mix)
    mix_energy = _energy(mix)
    return 10 * torch.log10((_energy(est) + tau * mix_energy + eps) / (mix_energy + eps))


def neg_si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8, zero_mean: bool = True) -> torch.Tensor:
    """``-si_snr(est, ref)``: a loss in dB, (...) for (..., T) inputs; a silent estimate costs
    ``-SI_SNR_FLOOR_DB`` (+100 dB), the most any estimate can."""
    return -si_snr(est, ref, eps=eps, zero_mean=zero_mean)


def neg_snr(est: torch.Tensor, ref: torch.Tensor, tau: float | None = None, eps: float = 1e-8) -> torch.Tensor:
    """``-snr(est, ref, tau)``: a loss in dB, (...) for (..., T) inputs."""
    return -snr(est, ref, tau=tau, eps=eps)

"""Mixture invariant training (MixIT, Wisdom et al. 2020): unsupervised separation from mixtures.

Two mixtures ``x_1, x_2`` (each of unknown sources) are added into a mixture of mixtures (MoM);
the model separates the MoM into M estimates; the loss is that of the best way to *remix* the
estimates into the two mixtures, each estimate going to exactly one mixture::

    L = min_A  1/N sum_n  -SNR_tau(x_n, sum_m A[n, m] s_m)       A in {0, 1}^(N x M), columns one-hot

with the thresholded SNR of :func:`~hubbub.losses.ratios.snr`,
``-SNR_tau(y, y') = 10 log10((||y - y'||² + tau ||y||²) / ||y||²)``; tau = 10^(-30/10) caps
the SNR at 30 dB as in the paper. There are N^M assignments (2^M for two mixtures). They are all
scored at once without materialising N^M remixed waveforms: the residual energy of every
assignment follows from the Gram matrices of the estimates and mixtures (B x M x M and B x N x M,
one pass over time), so the search costs O(N^M · M²) per example, whatever the length. The loss
itself is then computed exactly on the best remix. A mixture that is all zero (a silent segment)
is scored like an absent source in PIT: its remix's energy relative to the MoM.

A silent remix (no estimate, or only silent ones, sent to a mixture) needs no floor like
SI-SNR's (:data:`~hubbub.losses.ratios.SI_SNR_FLOOR_DB`): the SNR is not scale-invariant, so
silence scores its true value, ``-10 log10(1 + tau)`` ≈ 0 dB (the error is the whole mixture), not
an eps artefact, and any remix closer to the mixture than silence, i.e. above 0 dB, beats it.

:func:`mixture_consistency` projects estimates so that they add up to the mixture (Wisdom et al.
2019), with uniform or predicted weights.
"""
from __future__ import annotations

import functools
import itertools

import torch

from hubbub.losses.ratios import _at_least_float32, _energy

#: The soft threshold of Wisdom et al. 2020: SNRs are capped at 30 dB.
MIXIT_TAU = 10 ** (-30 / 10)

# Above this many assignments the table and the search get large (8 outputs, 2 mixtures: 256).
MAX_ASSIGNMENTS = 4096


@functools.lru_cache(maxsize=16)
def mixit_assignments(num_est: int, num_mix: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K, N, M) float 0/1: every assignment of M estimates to N mixtures, K = N^M.

    ``A[k, n, m] == 1`` when estimate m goes to mixture n in assignment k; every column sums to 1.
    Assignment 0 sends every estimate to mixture 0.
    """
    if num_est < 1 or num_mix < 1:
        raise ValueError(f"need at least one estimate and one mixture, got {num_est} and {num_mix}")
    if num_mix ** num_est > MAX_ASSIGNMENTS:
        raise ValueError(f"{num_mix}^{num_est} = {num_mix ** num_est} assignments is more than MixIT's "
                         f"exhaustive search handles ({MAX_ASSIGNMENTS}); use fewer outputs")
    choice = torch.tensor(list(itertools.product(range(num_mix), repeat=num_est)), device=device)   # (K, M)
    return torch.nn.functional.one_hot(choice, num_mix).transpose(1, 2).float()                 # (K, N, M)


def mixit(est: torch.Tensor, mixtures: torch.Tensor, tau: float = MIXIT_TAU,
          eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """MixIT loss: the best remix of ``est`` into ``mixtures`` under the thresholded negative SNR.

    Args:
        est: (B, M, T) estimates of the sources of the mixture of mixtures.
        mixtures: (B, N, T) the mixtures that were added into the model's input (N = 2 in MixIT).
        tau: soft threshold; the loss of a perfect remix is ``10 log10(tau)`` (-30 dB for the
            default), its floor.
        eps: absolute energy keeping silent signals finite.

    Returns:
        loss: (B,) mean over the N mixtures of ``-SNR_tau(mixture, remix)`` in dB,
            differentiable in ``est``.
        assignment: (B, M) int64, the mixture each estimate was sent to.

    Example::

        >>> s = torch.randn(1, 4, 8000)                       # 2 sources in each of 2 mixtures
        >>> mixtures = torch.stack([s[:, 0] + s[:, 1], s[:, 2] + s[:, 3]], 1)
        >>> loss, assign = mixit(s[:, [3, 0, 2, 1]], mixtures)  # any order of the true sources
        >>> round(loss.item(), 3), assign.tolist()
        (-30.0, [[1, 0, 1, 0]])
    """
    if est.dim() != 3 or mixtures.dim() != 3 or est.shape[0] != mixtures.shape[0] or est.shape[-1] != mixtures.shape[-1]:
        raise ValueError(f"expected est (B, M, T) and mixtures (B, N, T), got {tuple(est.shape)} and "
                         f"{tuple(mixtures.shape)}")
    table = mixit_assignments(est.shape[1], mixtures.shape[1], est.device)         # (K, N, M)
    with torch.no_grad():
        # Residual energies of every assignment from inner products, in float64 (tiny tensors).
        e, x = est.detach().double(), mixtures.detach().double()
        gram = e @ e.transpose(1, 2)                                                 # (B, M, M)
        cross = x @ e.transpose(1, 2)                                                # (B, N, M)
        energy = x.pow(2).sum(-1)                                                    # (B, N)
        a = table.double()
        residual = (energy[:, None] - 2 * torch.einsum("knm,bnm->bkn", a, cross)
                    + torch.einsum("knm,bmp,knp->bkn", a, gram, a)).clamp(min=0)      # (B, K, N)
        scale = _reference_energy(energy, x.sum(1).pow(2).sum(-1))                   # (B, N)
        cost = torch.log10((residual + tau * scale[:, None] + eps) / (scale[:, None] + eps)).sum(-1)
        best = cost.argmin(-1)                                                       # (B,)
    chosen = table[best].to(est.dtype)                                               # (B, N, M)
    remix = chosen @ est                                                             # (B, N, T)
    loss = _remix_loss(remix, mixtures, tau, eps)
    return loss, chosen.argmax(1)


def _reference_energy(mix_energy: torch.Tensor, mom_energy: torch.Tensor) -> torch.Tensor:
    """Per mixture, the energy its loss is relative to: its own, or the MoM's when it is silent."""
    return torch.where(mix_energy > 0, mix_energy, mom_energy[:, None].expand_as(mix_energy))


def _remix_loss(remix: torch.Tensor, mixtures: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    remix, mixtures = _at_least_float32(remix), _at_least_float32(mixtures)
    scale = _reference_energy(_energy(mixtures), _energy(mixtures.sum(1)))
    return (10 * torch.log10((_energy(mixtures - remix) + tau * scale + eps) / (scale + eps))).mean(-1)


class MixITLoss(torch.nn.Module):
    """MixIT as a module: ``forward(est, mixtures) -> (scalar loss, assignment)``; see :func:`mixit`.

    Example, one training step::

        mom = mixtures.sum(1)                             # (B, 2, T) -> (B, T)
        est = mixture_consistency(model(mom), mom)        # (B, M, T)
        loss, _ = MixITLoss()(est, mixtures)
    """

    def __init__(self, tau: float = MIXIT_TAU, eps: float = 1e-8):
        super().__init__()
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.tau, self.eps = tau, eps

    def forward(self, est: torch.Tensor, mixtures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, assignment = mixit(est, mixtures, tau=self.tau, eps=self.eps)
        return loss.mean(), assignment


def mixture_consistency(est: torch.Tensor, mix: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Project estimates so that they add up to the mixture: ``est + w * (mix - sum(est))``.

    Args:
        est: (B, M, T) estimates.
        mix: (B, T) or (B, 1, T) the mixture they come from.
        weights: None for the uniform projection (w = 1/M, the least-squares one), or (B, M) /
            (B, M, T) non-negative weights that sum to 1 over M (e.g. a softmax predicted by the
            model, Wisdom et al. 2019), deciding which estimates absorb the residual.

    Returns:
        (B, M, T) with ``out.sum(1) == mix`` (up to rounding).
    """
    if mix.dim() == 3:
        mix = mix[:, 0]
    residual = (mix - est.sum(1)).unsqueeze(1)
    if weights is None:
        return est + residual / est.shape[1]
    if weights.dim() == 2:
        weights = weights.unsqueeze(-1)
    return est + weights * residual

"""Differentiable separation losses on (B, S, T) tensors: SI-SNR, thresholded SNR, PIT, MixIT.

Typical use in a trainer::

    from hubbub.losses import PITLoss, reorder
    criterion = PITLoss(kind="si_snr")
    loss, perm = criterion(est, batch["sources"]["reverberant"], source_mask=batch["source_mask"],
                           mix=batch["mix"])
    ordered = reorder(est, perm)

Values are in dB; the losses are their negatives (lower is better). A silent estimate reads
``SI_SNR_FLOOR_DB`` (-100 dB) under SI-SNR, here as in :mod:`hubbub.metrics`, where the evaluation
metrics in numpy (SDR, PESQ, STOI) live.
"""
from hubbub.losses.permutation import (MAX_EXHAUSTIVE_ASSIGNMENTS, PITLoss, pairwise_loss_matrix, pit,
                               pit_from_matrix, reorder)
from hubbub.losses.mixit import MIXIT_TAU, MixITLoss, mixit, mixit_assignments, mixture_consistency
from hubbub.losses.ratios import SI_SNR_FLOOR_DB, absent_source_loss, neg_si_snr, neg_snr, si_snr, snr

__all__ = [
    "MAX_EXHAUSTIVE_ASSIGNMENTS", "MIXIT_TAU", "MixITLoss", "PITLoss", "mixit", "mixit_assignments",
    "mixture_consistency", "SI_SNR_FLOOR_DB", "absent_source_loss", "neg_si_snr", "neg_snr",
    "pairwise_loss_matrix", "pit", "pit_from_matrix", "reorder", "si_snr", "snr",
]

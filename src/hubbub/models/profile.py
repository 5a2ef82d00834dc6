"""Compute cost of a model: multiply-accumulates per input length."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _onednn_lstm_flops(input_shape, weight_ih_shape, weight_hh_shape, *args, **kwargs) -> int:
    """FLOPs of one direction of one layer of the CPU (oneDNN) LSTM kernel, which FlopCounterMode
    does not know: per step and example, the input and recurrent matmuls (4H x I and 4H x H).
    Gate nonlinearities and additions are ignored, as for every other op."""
    steps_times_batch = 1
    for size in input_shape[:-1]:
        steps_times_batch *= size
    weights = weight_ih_shape[0] * weight_ih_shape[1] + weight_hh_shape[0] * weight_hh_shape[1]
    return 2 * steps_times_batch * weights


def count_macs(model: nn.Module, seconds: float = 1.0, sample_rate_hz: int = 8000) -> int:
    """Multiply-accumulates of one forward pass on one mixture of ``seconds`` at ``sample_rate_hz``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
    MACs = FLOPs / 2) on a CPU copy of the model in eval mode, so the caller's model is untouched.
    LSTMs run as a fused oneDNN kernel on CPU that FlopCounterMode does not count; a formula for
    that kernel is registered here so they are included. Elementwise ops, norms and the FFTs of
    the STFT are not counted.

    Example::

        count_macs(build_model("convtasnet", **model_config("convtasnet", "paper")))  # ~5e9 for 1 s at 8 kHz
    """
    model = copy.deepcopy(model).to("cpu").eval()
    mix = torch.zeros(1, round(seconds * sample_rate_hz))
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.mkldnn_rnn_layer: _onednn_lstm_flops})
    with torch.no_grad(), counter:
        model(mix)
    return counter.get_total_flops() // 2

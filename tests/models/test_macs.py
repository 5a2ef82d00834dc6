import pytest
from torch import nn

from hubbub.models import MODELS, build_model, count_macs, model_config
from hubbub.models.factory import AUDIO_VISUAL


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 8, stride=4, bias=False)

    def forward(self, mix):
        return self.conv(mix.unsqueeze(1))


class _BLSTM(nn.Module):
    """Reads the mixture as a sequence of 8-sample vectors."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True, bidirectional=True)

    def forward(self, mix):
        return self.rnn(mix.reshape(1, -1, 8))[0]


def test_conv_macs_match_the_formula():
    # 800 samples -> 199 frames, each 4 filters x 8 taps.
    assert count_macs(_Conv(), seconds=0.1, sample_rate_hz=8000) == 199 * 4 * 8


def test_lstm_macs_are_counted():
    # 800 samples -> 100 steps; per step and direction 4H x (input + H) multiply-adds.
    assert count_macs(_BLSTM(), seconds=0.1, sample_rate_hz=8000) == 2 * 100 * 4 * 16 * (8 + 16)


@pytest.mark.parametrize("name", sorted(set(MODELS) - AUDIO_VISUAL))
def test_debug_models_macs(name):
    model = build_model(name, **model_config(name, "debug")).train()
    one = count_macs(model, seconds=1.0, sample_rate_hz=8000)
    assert 0 < one < 1e8
    assert count_macs(model, seconds=2.0, sample_rate_hz=8000) > 1.5 * one  # grows with length
    assert model.training  # the caller's model is left as it was

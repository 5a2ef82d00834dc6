import pytest
import torch

from hubbub.models.encoders import STFT, ConvDecoder, ConvEncoder

LENGTHS = [1, 7, 8, 37, 8001]


@pytest.mark.parametrize("kernel_size, stride", [(16, 8), (2, 1), (5, 2)])
@pytest.mark.parametrize("num_samples", LENGTHS)
def test_conv_frames_and_lengths(kernel_size, stride, num_samples):
    enc, dec = ConvEncoder(4, kernel_size, stride), ConvDecoder(4, kernel_size, stride)
    frames = enc(torch.randn(2, num_samples))
    assert frames.shape == (2, 4, num_samples // stride + 1)
    assert (frames >= 0).all()
    assert dec(frames.unsqueeze(1).expand(2, 3, 4, -1), num_samples).shape == (2, 3, num_samples)


def test_conv_frame_alignment():
    """Frame l spans samples [l * stride - 2, l * stride + 2): an impulse at sample 4 excites
    frame 2 through the kernel's centre tap and frame 3 through its first tap."""
    enc = ConvEncoder(1, kernel_size=4, stride=2)
    with torch.no_grad():
        enc.conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    impulse = torch.zeros(1, 10)
    impulse[0, 4] = 1.0
    assert enc(impulse)[0, 0].tolist() == [0, 0, 3, 1, 0, 0]


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_stft_perfect_reconstruction(num_samples):
    stft = STFT(256, 64)
    wav = torch.randn(2, 3, num_samples)
    spec = stft(wav)
    assert spec.shape == (2, 3, 129, num_samples // 64 + 1) and spec.is_complex()
    torch.testing.assert_close(stft.inverse(spec, num_samples), wav, atol=1e-5, rtol=0)


def test_stft_window_is_not_checkpointed():
    assert STFT(64, 16).state_dict() == {}

"""One validation path: the step a stage trains with scores the valid batches, best-permutation
SI-SNRi and the mismatched lips are written once, and a batch scores each sample as it would alone."""
import pytest
import torch

from hubbub.config import ConfigError
from hubbub.finetune import PITStage, finetune_pit
from hubbub.losses import si_snr
from hubbub.train import load_train_config
from hubbub.train.solver import _valid_batches
from hubbub.train.validation import pit_si_snri, with_mismatched_lips


def _item(key: str, num_samples: int, lips_frames: int = 3, num_sources: int = 2) -> dict:
    lips = torch.full((num_sources, lips_frames, 2, 2), int(key), dtype=torch.uint8)
    return {"key": key, "mix": torch.randn(1, num_samples), "sources": {"lips": lips},
            "num_sources": num_sources, "extras": {}, "start_sample": 0, "meta": {}}


def test_pit_si_snri_is_the_best_assignment_over_present_sources_only():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 2, 800, generator=g)
    ref[1, 1] = 0                                                   # example 1 has one speaker
    mask = torch.tensor([[True, True], [True, False]])
    est = ref[:, [1, 0]] + 0.3 * torch.randn(2, 2, 800, generator=g)   # permuted, noisy estimates
    extra = torch.randn(2, 1, 800, generator=g)                     # a surplus output is left unassigned
    mix = ref.sum(1)
    gains = pit_si_snri(torch.cat([est, extra], 1), ref, mix, mask)
    expected0 = (si_snr(est[0, [1, 0]], ref[0]) - si_snr(mix[0].expand(2, -1), ref[0])).mean()
    expected1 = si_snr(est[1, 1], ref[1, 0]) - si_snr(mix[1], ref[1, 0])
    torch.testing.assert_close(gains, torch.stack([expected0, expected1]))
    # the order of the outputs does not matter
    torch.testing.assert_close(pit_si_snri(torch.cat([extra, est.flip(1)], 1), ref, mix, mask), gains)


def test_mismatched_lips_are_the_next_utterances_first_source_in_order():
    items = [_item("1", 80), _item("2", 80, lips_frames=5), _item("3", 80, lips_frames=2)]
    out = list(with_mismatched_lips(iter(items)))
    assert [item["key"] for item, _ in out] == ["1", "2", "3"]
    # item k gets source 0 of item k + 1, the last one item 0's, cut or padded to its own frames
    assert [other[0, 0, 0].item() for _, other in out] == [2, 3, 1]
    assert [tuple(other.shape) for _, other in out] == [(3, 2, 2), (5, 2, 2), (2, 2, 2)]
    assert list(with_mismatched_lips([items[0]]))[0][1] is None    # no other utterance
    assert list(with_mismatched_lips([])) == []


def test_valid_batches_never_pad_time():
    lengths = [80, 80, 80, 40, 80, 80]
    batches = list(_valid_batches((_item(str(i), n) for i, n in enumerate(lengths)), batch_size=2))
    assert [b["keys"] for b in batches] == [["0", "1"], ["2"], ["3"], ["4", "5"]]
    assert all(int(b["num_samples"].min()) == b["mix"].shape[-1] for b in batches)


def _cfg(corpus, *extra):
    return load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", *extra])


def test_a_batch_scores_each_sample_as_it_would_alone(tmp_path, corpus):
    def validate(batch_size):
        stage = PITStage(_cfg(corpus, f"data.batch_size={batch_size}"), tmp_path / "run")
        torch.manual_seed(0)
        model = stage.build_model().eval()
        stage.valid_dataset = stage.build_datasets()[1]
        with torch.inference_mode():
            return stage._validate(model, "cpu")

    one, four = validate(1), validate(4)
    assert set(one) == {"si_snri_db"}
    assert four["si_snri_db"] == pytest.approx(one["si_snri_db"], abs=1e-4)


def test_a_stage_refuses_a_config_of_another_stage(tmp_path, corpus):
    cfg = load_train_config("mixit_debug", [f"data.shards={corpus}"])
    with pytest.raises(ConfigError, match="stage"):
        finetune_pit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

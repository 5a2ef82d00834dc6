"""RIR banks: rooms simulated once, reused by mixtures with new sources and noise."""
import io
import json

import numpy as np
import pytest
import webdataset as wds

from hubbub.cli import main
from hubbub.shards.format import decode_sample, dequantize, storage_of
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate, simulate_rir_bank
from hubbub.simulate.sample import render
from hubbub.testing import make_speech_folder


def test_mixtures_reuse_bank_rooms(tmp_path):
    speech = make_speech_folder(tmp_path / "speech", num_speakers=10, utterances_per_speaker=2)
    bank = tmp_path / "bank"
    assert main(["rirs", "--recipe", "debug", "--rooms", "10", "--positions", "4", "--out", str(bank),
                 "--workers", "0", "--quiet"]) == 0
    index = json.loads((bank / "index.json").read_text())
    assert index["kind"] == "rir_bank" and index["splits"]["train"]["num_samples"] == 8

    recipe = load_recipe("debug", [f"speech.corpus={speech}", f"room.rir_bank={bank}"])
    res = simulate(recipe, num=12, out_dir=tmp_path / "mix", workers=0, progress=False, splits=["train"])
    assert res.failed_samples == []
    assert verify_corpus(tmp_path / "mix").ok

    samples = [decode_sample(r) for r in wds.WebDataset(str(tmp_path / "mix" / "train-000000.tar"),
                                                         shardshuffle=False, empty_check=False)]
    bank_rooms = {}
    urls = [str(p) for p in sorted(bank.glob("train-*.tar"))]
    for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        bank_rooms[json.loads(raw["json"])["index"]] = raw
    for s in samples:
        room = s["meta"]["room"]
        assert room["rir_mode"] == "bank" and room["bank_split"] == "train"
        # the RIRs stored with the mixture are the bank's, for the chosen positions
        bank_rirs = np.load(io.BytesIO(bank_rooms[room["bank_room"]]["rirs.npy"]))
        for k, pos in enumerate(room["bank_positions"]):
            np.testing.assert_array_equal(s["sources"]["rir"][k], bank_rirs[pos])
        np.testing.assert_allclose(s["mix"], sum(s["sources"]["reverberant"]) + s["noise"], atol=1e-6)
    # 4 samples from 8 rooms: a re-render from metadata alone reads the bank again
    again = render(samples[0]["meta"])
    np.testing.assert_array_equal(dequantize(again.mix_q, storage_of(again.meta)["bits"]), samples[0]["mix"])


@pytest.mark.slow
def test_bank_rooms_are_identical_for_any_worker_count(tmp_path):
    r = load_recipe("debug", ["samples_per_shard=2"])
    simulate_rir_bank(r, num_rooms=6, positions=3, out_dir=tmp_path / "a", workers=0, progress=False)
    simulate_rir_bank(r, num_rooms=6, positions=3, out_dir=tmp_path / "b", workers=2, progress=False)
    a = {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.tar")}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.tar")}
    assert a == b and len(a) == 4  # train 5 rooms in shards of 2+2+1, valid 1

"""One chained run through the CLI, as a user would: voices -> simulate -> verify -> stats ->
PIT finetuning -> evaluate -> separate -> publish -> from_pretrained."""
import json

import numpy as np
import soundfile as sf
import torch

from hubbub.cli import main
from hubbub.publish import from_pretrained


def test_voices_to_published_model(tmp_path, capsys):
    voices = tmp_path / "voices"
    assert main(["voices", "--out", str(voices), "--speakers", "8", "--utterances", "3", "--sample-rate-hz", "8000",
                 "--quiet"]) == 0
    corpus = tmp_path / "corpus"
    assert main(["simulate", "--recipe", "debug", "--num", "24", "--out", str(corpus), "--workers", "0", "--quiet",
                 "--set", f"speech.corpus={voices}", "--set", "speakers.distribution={2: 1.0}",
                 "--set", "splits={train: 0.5, valid: 0.25, test: 0.25}"]) == 0
    assert main(["shards", "verify", str(corpus)]) == 0
    capsys.readouterr()
    assert main(["shards", "stats", str(corpus), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["train"]["num_samples"] == 12 and (corpus / "stats.png").exists()

    run = tmp_path / "run"
    assert main(["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(run),
                 "--set", "steps=4", "--set", "ckpt_every=2", "--set", "data.crop_s=0.5"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--shards", str(corpus), "--split", "valid", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["overall"]["count"] == 6 and np.isfinite(results["overall"]["mean"]["si_snri"])

    mix = tmp_path / "mix.wav"
    sf.write(mix, np.random.default_rng(0).standard_normal(8000 * 3).astype(np.float32) * 0.1, 8000)
    assert main(["separate", str(run), str(mix), "--out", str(tmp_path / "sep")]) == 0
    outs = sorted((tmp_path / "sep").glob("*.wav"))
    assert len(outs) == 2 and sf.info(outs[0]).frames == 8000 * 3

    assert main(["publish", str(run), "--to", str(tmp_path / "pub")]) == 0
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "debug" in card and "CC0-1.0" in card
    model = from_pretrained(tmp_path / "pub")
    x = torch.randn(1, 8000)
    from hubbub.models import load_model
    torch.testing.assert_close(model(x), load_model(run / "model").eval()(x))

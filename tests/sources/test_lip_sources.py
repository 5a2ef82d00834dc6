"""Lip sources per utterance: AV folder layouts, ROI files found and checked, skips with reasons."""
import json

import numpy as np
import pytest

import hubbub.sources.lips as lips_module
from hubbub.sources.lips import LIPS_FRAME_TOLERANCE, roi_frame_indices
from hubbub.sources.speech import detect_layout, index_speech, _walk_audio
from hubbub.testing import make_av_folder, make_bad_rois, make_speech_folder


@pytest.mark.parametrize("layout, speakers", [
    ("lrs", ["talk00Xq", "talk01Xq", "talk02Xq"]),
    ("voxceleb2", ["id10001", "id10002", "id10003"]),   # not "lrs": the tie goes to voxceleb2
])
def test_av_layouts_are_detected_with_their_speakers(tmp_path, layout, speakers):
    root = make_av_folder(tmp_path / layout, layout=layout, num_speakers=3)
    assert detect_layout(root, _walk_audio(root)) == layout
    assert index_speech(root).speakers == speakers


@pytest.mark.parametrize("layout", ["librispeech", "vctk"])
def test_older_layouts_are_still_detected(tmp_path, layout):
    root = make_speech_folder(tmp_path / layout, layout=layout, num_speakers=3, utterances_per_speaker=2)
    assert detect_layout(root, _walk_audio(root)) == layout


def test_every_bad_roi_is_skipped_with_its_reason(tmp_path):
    root = make_av_folder(tmp_path / "lrs", num_speakers=2)
    bad = make_bad_rois(root)
    idx = index_speech(root, lips=True)
    assert {s["path"]: s["reason"] for s in idx.skipped} == bad
    assert all(s["path"] in bad for s in idx.skipped)
    mismatch = next(s for s in idx.skipped if s["reason"] == "lips-length-mismatch")
    assert "per utterance" in mismatch["detail"] and mismatch["roi"].endswith("00002.npy")
    kept = {u.path: u.lips for u in idx.utterances}
    assert len(kept) == 2 * 2 + 1
    assert all(v["kind"] == "file" and v["path"].endswith(".npy") for v in kept.values())
    edge = kept[str(root / "trainval" / "badtalk" / "00007.wav")]   # 88x88, +2 frames: within tolerance
    assert edge["num_frames"] == 50 + LIPS_FRAME_TOLERANCE
    # Without lips, nothing is checked and nothing skipped for want of a ROI file.
    assert len(index_speech(root).utterances) == 2 * 2 + 7 and index_speech(root).skipped == []


@pytest.mark.parametrize("roi_format", ["npz", "frames"])
def test_rois_in_a_parallel_tree(tmp_path, roi_format):
    root = make_av_folder(tmp_path / "audio", num_speakers=2, lips_dir=tmp_path / "mouths", roi_format=roi_format)
    assert [s["reason"] for s in index_speech(root, lips=True).skipped] == ["no-lips"] * 4
    idx = index_speech(root, lips=True, lips_dir=tmp_path / "mouths")
    assert idx.skipped == [] and len(idx.utterances) == 4
    u = idx.utterances[0]
    rel = (tmp_path / "mouths").joinpath(*u.path.split("/audio/")[1].split("/"))
    assert u.lips["path"] == str(rel.with_suffix(".npz" if roi_format == "npz" else ""))
    assert abs(u.lips["num_frames"] - u.duration_s * 25) <= 1


def test_manifest_rows_name_their_lips_or_bring_phonemes(tmp_path):
    root = make_av_folder(tmp_path / "c", num_speakers=1, utterances_per_speaker=2)
    wavs = sorted(root.rglob("*.wav"))
    (root / "moved").mkdir()
    (root / "moved" / "mouth.npy").write_bytes(wavs[0].with_suffix(".npy").read_bytes())
    wavs[0].with_suffix(".npy").unlink()
    rows = [
        {"path": str(wavs[0].relative_to(root)), "speaker": "a", "lips": "moved/mouth.npy"},
        {"path": str(wavs[1].relative_to(root)), "speaker": "b", "phoneme_set": "cmu",
         "phonemes": [["pau", 0.0, 0.5], ["aa", 0.5, 1.0]]},
        {"path": str(wavs[1].relative_to(root)), "speaker": "c", "phoneme_set": "klingon",
         "phonemes": [["aa", 0.0, 1.0]]},
        {"path": str(wavs[1].relative_to(root)), "speaker": "d", "lips": "nowhere.npy"},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    idx = index_speech(root, lips=True)
    by_speaker = {u.speaker: u.lips for u in idx.utterances}
    assert by_speaker["a"] == {"kind": "file", "path": str(root / "moved" / "mouth.npy"),
                               "num_frames": by_speaker["a"]["num_frames"]}
    assert by_speaker["b"] == {"kind": "phonemes", "phoneme_set": "cmu",
                               "phonemes": [["pau", 0.0, 0.5], ["aa", 0.5, 1.0]]}
    assert sorted(s["reason"] for s in idx.skipped) == ["bad-lips", "no-lips"]


def test_roi_headers_are_cached_and_reread_when_a_file_changes(tmp_path, monkeypatch):
    root = make_av_folder(tmp_path / "c", num_speakers=2)
    first = index_speech(root, lips=True)
    monkeypatch.setattr(lips_module, "probe_roi", lambda path: pytest.fail(f"{path} probed again"))
    again = index_speech(root, lips=True)
    assert [u.lips for u in again.utterances] == [u.lips for u in first.utterances]
    monkeypatch.undo()
    roi = first.utterances[0].lips["path"]
    np.save(roi, np.zeros((10, 96, 96), np.uint8))  # another clip's frames: now too short
    changed = index_speech(root, lips=True)
    assert [s["reason"] for s in changed.skipped] == ["lips-length-mismatch"]


def test_roi_frames_follow_the_excerpt_and_hold_its_edges():
    # 16 kHz, 640 samples a frame. The excerpt starts 1.0 s into the utterance (frame 25) and is
    # placed 0.4 s (10 frames) into the mixture, 0.8 s (20 frames) long.
    source = {"utterance_start_s": 1.0, "start_sample": 6400, "num_samples": 12800}
    idx = roi_frame_indices(40, 16000, source, roi_num_frames=100)
    assert (idx[:10] == 25).all()                      # before the excerpt: its first frame, still
    np.testing.assert_array_equal(idx[10:30], np.arange(25, 45))
    assert (idx[30:] == 44).all()                      # after it: its last frame
    # A ROI file a frame or two short of its audio: clipped to the frames it has.
    assert roi_frame_indices(40, 16000, source, roi_num_frames=40).max() == 39

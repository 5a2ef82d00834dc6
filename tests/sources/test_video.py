"""Mouth-ROI files: every format load_roi reads, gives (F, 96, 96) uint8, and what it refuses."""
import numpy as np
import pytest
from PIL import Image

from hubbub.testing import write_roi
from hubbub.video import RoiInfo, load_roi, probe_roi


def clip(num_frames=5, size=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (num_frames, size, size), dtype=np.uint8)


@pytest.mark.parametrize("roi_format", ["npy", "npz", "frames"])
def test_each_format_loads_the_same_frames(tmp_path, roi_format):
    frames = clip()
    path = write_roi(tmp_path / "00001", frames, roi_format)
    assert probe_roi(path) == RoiInfo(5, 96, 96)
    loaded = load_roi(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (5, 96, 96)
    np.testing.assert_array_equal(loaded, frames)


def test_npz_takes_its_only_array_or_the_data_key(tmp_path):
    frames = clip()
    np.savez(tmp_path / "one.npz", mouths=frames)
    np.savez(tmp_path / "keyed.npz", data=frames, landmarks=np.zeros((5, 68, 2)))
    np.savez(tmp_path / "ambiguous.npz", a=frames, b=frames)
    for name in ("one", "keyed"):
        np.testing.assert_array_equal(load_roi(tmp_path / f"{name}.npz"), frames)
        assert probe_roi(tmp_path / f"{name}.npz").num_frames == 5
    for check in (load_roi, probe_roi):
        with pytest.raises(ValueError, match=r"ambiguous\.npz.*'data'"):
            check(tmp_path / "ambiguous.npz")


def test_colour_becomes_bt601_luma(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    luma = np.rint(rgb @ np.array([0.299, 0.587, 0.114]))
    np.save(tmp_path / "rgb.npy", rgb)
    np.testing.assert_array_equal(load_roi(tmp_path / "rgb.npy"), luma)
    np.save(tmp_path / "rgba.npy", np.concatenate([rgb, np.full((3, 96, 96, 1), 7, np.uint8)], axis=-1))
    np.testing.assert_array_equal(load_roi(tmp_path / "rgba.npy"), luma)
    folder = tmp_path / "frames"
    folder.mkdir()
    for j, frame in enumerate(rgb):
        Image.fromarray(frame, "RGB").save(folder / f"{j:03d}.png")
    Image.fromarray(np.dstack([rgb[0], np.full((96, 96), 200, np.uint8)]), "RGBA").save(folder / "003.png")
    got = load_roi(folder)
    assert got.shape == (4, 96, 96)
    assert np.abs(got[:3].astype(int) - luma).max() <= 1   # Pillow's fixed-point luma rounds
    assert np.abs(got[3].astype(int) - luma[0]).max() <= 1  # alpha dropped


def test_frame_folders_are_read_in_name_order(tmp_path):
    frames = np.stack([np.full((96, 96), v, np.uint8) for v in (10, 20, 30)])
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, frame in zip(("b_002.png", "b_000.jpg", "b_001.png"), frames[[2, 0, 1]]):
        Image.fromarray(frame).save(folder / name)
    (folder / "notes.txt").write_text("not a frame")
    np.testing.assert_allclose(load_roi(folder)[:, 48, 48], [10, 20, 30], atol=2)  # by name, not by age


def test_float_frames_in_0_1_or_0_255(tmp_path):
    frames = clip()
    np.save(tmp_path / "unit.npy", frames.astype(np.float32) / 255)
    np.save(tmp_path / "grey.npy", frames.astype(np.float64))
    np.testing.assert_array_equal(load_roi(tmp_path / "unit.npy"), frames)
    np.testing.assert_array_equal(load_roi(tmp_path / "grey.npy"), frames)
    np.save(tmp_path / "wild.npy", frames.astype(np.float32) * 3)
    with pytest.raises(ValueError, match=r"wild\.npy.*0\.\.255"):
        load_roi(tmp_path / "wild.npy")


@pytest.mark.parametrize("height, width", [(88, 88), (112, 112), (100, 120)])
def test_other_sizes_are_resized_to_96(tmp_path, height, width):
    yy, xx = np.mgrid[:height, :width]
    ramp = (255 * yy / (height - 1)).astype(np.uint8)         # bright at the bottom
    frames = np.stack([ramp, np.full((height, width), 77, np.uint8)])
    np.save(tmp_path / "roi.npy", frames)
    out = load_roi(tmp_path / "roi.npy")
    assert out.shape == (2, 96, 96) and out.dtype == np.uint8
    assert (out[1] == 77).all()                                # a flat frame stays flat
    assert out[0, :5].mean() < 20 and out[0, -5:].mean() > 235 and (np.diff(out[0, :, 48].astype(int)) >= -1).all()
    assert probe_roi(tmp_path / "roi.npy") == RoiInfo(2, height, width)


@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 96, 96), np.uint8), "empty"),
    (np.zeros((96, 96), np.uint8), "shape"),
    (np.zeros((2, 3, 96, 96), np.uint8), "shape"),
    (np.zeros((4, 64, 64), np.uint8), "88x88"),
    (np.full((4, 96, 96), np.nan, np.float32), "NaN"),
    (np.array(["a", "b"]), "numeric"),
])
def test_bad_arrays_are_refused_naming_the_file(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=message) as exc:
        load_roi(tmp_path / "bad.npy")
    assert "bad.npy" in str(exc.value)
    if message != "88x88":  # probe_roi reports sizes; the caller decides (hubbub.sources.lips)
        with pytest.raises(ValueError, match="bad.npy"):
            probe_roi(tmp_path / "bad.npy")


def test_pickles_are_never_loaded(tmp_path):
    np.save(tmp_path / "pickled.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "pickled.npz", data=np.array([{"x": 1}], dtype=object))
    for name in ("pickled.npy", "pickled.npz"):
        for check in (load_roi, probe_roi):
            with pytest.raises(ValueError, match=rf"{name}.*pickle"):
                check(tmp_path / name)


def test_videos_missing_files_and_junk(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ValueError, match=r"clip\.mp4.*cropped to mouth"):
        load_roi(tmp_path / "clip.mp4")
    with pytest.raises(FileNotFoundError, match="nothing.npy"):
        load_roi(tmp_path / "nothing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    (tmp_path / "empty").mkdir()
    for name in ("junk.npy", "junk.npz", "empty"):
        for check in (load_roi, probe_roi):
            with pytest.raises(ValueError, match=name):
                check(tmp_path / name)

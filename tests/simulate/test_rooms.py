"""Room drawing (:func:`hubbub.simulate.rooms.draw_room`), shared by mixtures and RIR banks: every
draw keeps the recipe's ranges and distances."""
import numpy as np
import pytest

from hubbub.simulate.recipe import load_recipe
from hubbub.simulate.rooms import RoomError, draw_room

ARRAYS = [("mics.array=single", "mics.count=1"), ("mics.array=pair", "mics.count=2"),
          ("mics.array=circular", "mics.count=4")]


@pytest.mark.parametrize("array", ARRAYS)
@pytest.mark.parametrize("seed", range(5))
def test_drawn_rooms_keep_the_recipes_ranges_and_distances(array, seed):
    recipe = load_recipe("debug", list(array))
    rc, mc = recipe.room, recipe.mics
    room, mics, positions = draw_room(np.random.default_rng(seed), rc, mc, 3)
    dim = np.array(room["dim_m"])
    for value, bounds in zip(dim, (rc.length_m, rc.width_m, rc.height_m)):
        assert bounds[0] - 1e-4 <= value <= bounds[1] + 1e-4
    assert rc.rt60_s[0] - 1e-4 <= room["rt60_s_target"] <= rc.rt60_s[1] + 1e-4
    mic_pos, centre = np.array(mics["positions_m"]), np.array(mics["center_m"])
    assert mic_pos.shape == (mc.count, 3) and ((mic_pos > 0) & (mic_pos < dim)).all()
    src = np.array([p["position_m"] for p in positions])
    assert len(src) == 3
    wall = rc.min_wall_distance_m - 1e-3
    assert ((src >= wall) & (src <= dim - wall)).all()
    for p, s in zip(positions, src):
        assert p["distance_m"] == pytest.approx(np.linalg.norm(s - centre), abs=1e-3)
        assert p["distance_m"] >= rc.min_mic_distance_m - 1e-3
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(src) for b in src[i + 1:]]
    assert min(gaps) >= rc.min_source_distance_m - 1e-3


def test_anechoic_rooms_have_no_rt60():
    recipe = load_recipe("debug", ["room.rir_mode=anechoic", "room.rt60_s=[0, 0]"])
    room, _, _ = draw_room(np.random.default_rng(0), recipe.room, recipe.mics, 2)
    assert room["rt60_s_target"] is None and room["rir_mode"] == "anechoic"


def test_sources_that_cannot_fit_are_a_room_error():
    recipe = load_recipe("debug", ["room.length_m=[3, 3]", "room.width_m=[3, 3]", "room.min_source_distance_m=2.5"])
    with pytest.raises(RoomError, match="widen room"):
        draw_room(np.random.default_rng(0), recipe.room, recipe.mics, 4)

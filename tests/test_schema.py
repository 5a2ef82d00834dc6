"""The sample schema (hubbub.schema): every corpus hubbub has written reads into the typed record
and writes back to the bytes it was read from; member names are the writers'; targets are one
tuple; duration_s is computed."""
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from hubbub.schema import (TARGETS, Room, SampleMeta, SchemaError, Source, find_member, member_name,
                           stored_members)
from hubbub.shards.format import encode_json, encode_npy
from hubbub.simulate.recipe import preset_names
from hubbub.simulate.sample import render, to_members
from hubbub.testing import (dummy_speech, make_av_folder, make_dummy_corpus, make_dummy_sample, make_simulator,
                            make_speech_folder)

AV_PRESETS = ("av", "av_debug")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    return (make_speech_folder(root / "speech", num_speakers=8, utterances_per_speaker=2, seconds=2.5),
            make_av_folder(root / "lrs", num_speakers=4, utterances_per_speaker=2, seconds=2.5))


@pytest.fixture(scope="module")
def preset_samples(folders):
    """Preset -> (what draw returned, the members to_members wrote) of one train sample."""
    speech, av = folders
    out = {}
    for preset in sorted(preset_names()):
        sim = make_simulator(av if preset in AV_PRESETS else speech, preset, "splits={train: 0.5, test: 0.5}")
        params = sim.draw("train", 0)
        out[preset] = params, to_members(render(params))
    return out


def sample_jsons(corpus) -> list[bytes]:
    """The ``{key}.json`` bytes of every sample of a corpus, as stored."""
    out = []
    for tar_path in sorted(corpus.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            out += [tar.extractfile(m).read() for m in tar if m.name.endswith(".json") and m.name.count(".") == 1]
    assert out, corpus
    return out


def assert_round_trip(data: bytes) -> SampleMeta:
    meta = SampleMeta.from_json(data)
    assert meta.to_json() == data
    assert SampleMeta.from_json(meta.to_json()) == meta
    return meta


# -- every corpus written so far -------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(preset_names()))
def test_every_preset_sample_round_trips_and_its_members_are_named_by_the_schema(preset_samples, preset):
    params, members = preset_samples[preset]
    meta = assert_round_trip(members["json"])
    assert encode_json(SampleMeta.from_dict(params).to_dict()) == encode_json(params)   # the drawn parameters too
    assert set(meta.member_names()) == set(members) - {"__key__", "json"}
    assert member_name("mix", codec=meta.stored_as.codec) in members


def test_a_mixture_on_a_rir_bank_round_trips(folders, tmp_path):
    from hubbub.simulate import load_recipe, simulate_rir_bank

    speech, _ = folders
    bank = tmp_path / "bank"
    simulate_rir_bank(load_recipe("debug"), num_rooms=2, positions=2, out_dir=bank, workers=0, progress=False)
    sim = make_simulator(speech, "debug", f"room.rir_bank={bank}", "splits={train: 1.0}")
    members = to_members(render(sim.draw("train", 0)))
    meta = assert_round_trip(members["json"])
    assert meta.room.rir_mode == "bank" and meta.room.bank_positions is not None
    assert meta.room.rt60_s_measured is not None      # measured when the bank was made


@pytest.mark.parametrize("kwargs", [dict(), dict(num_speakers=[1, 3], num_mics=2),
                                    dict(lips=True, sample_rate_hz=16000)])
def test_dummy_corpora_round_trip_and_their_members_are_the_schemas(tmp_path, kwargs):
    corpus = make_dummy_corpus(tmp_path, splits={"train": 3}, seconds=0.25, **kwargs)
    for data in sample_jsons(corpus):
        meta = assert_round_trip(data)
        assert meta.storage is None and meta.stored_as.codec == "flac" and meta.stored_as.bits == 24
        members = make_dummy_sample(meta.split, meta.index, num_speakers=meta.num_speakers, num_mics=meta.num_mics,
                                    seconds=0.25, sample_rate_hz=meta.sample_rate_hz, lips="lips" in meta.targets)
        assert set(meta.member_names()) == set(members) - {"__key__", "json"}


def test_ingested_recordings_round_trip(tmp_path):
    from hubbub.shards.ingest import ingest_recordings

    folder = make_speech_folder(tmp_path / "rec", num_speakers=2, utterances_per_speaker=1, seconds=2.0)
    ingest_recordings(folder, tmp_path / "corpus", segment_s=1.0, min_segment_s=0.5, sample_rate_hz=8000,
                      splits={"train": 0.5, "valid": 0.5}, codec="wav", bits=16)
    for data in sample_jsons(tmp_path / "corpus"):
        meta = assert_round_trip(data)
        assert meta.unlabelled and meta.sources == [] and meta.room is None and meta.mics is None
        assert meta.member_names() == ["mix.wav"] and "source_file" in meta.extra


def make_librimix(root, ids=("100-0-0000_200-1-0000", "101-0-0001_201-1-0001"), rate=8000):
    """A two-mixture LibriMix test split: sources, noise and both mixtures, 16-bit files."""
    rng = np.random.default_rng(0)
    for id_ in ids:
        s1, s2 = dummy_speech(rng, 0.5, rate), 0.5 * dummy_speech(rng, 0.5, rate)
        noise = (0.02 * rng.standard_normal(len(s1))).astype(np.float32)
        for name, x in {"s1": s1, "s2": s2, "noise": noise, "mix_clean": s1 + s2, "mix_both": s1 + s2 + noise}.items():
            (root / f"wav{rate // 1000}k" / "min" / "test" / name).mkdir(parents=True, exist_ok=True)
            sf.write(root / f"wav{rate // 1000}k" / "min" / "test" / name / f"{id_}.wav", x, rate, subtype="PCM_16")
    return root


@pytest.mark.parametrize("mixture", ["mix_clean", "mix_both"])
def test_ingested_sets_round_trip(tmp_path, mixture):
    from hubbub.shards.layouts import ingest_dataset

    root = make_librimix(tmp_path / "Libri2Mix")
    ingest_dataset(root, tmp_path / "corpus", mixture=mixture)
    for data in sample_jsons(tmp_path / "corpus"):
        meta = assert_round_trip(data)
        assert meta.kind == "dataset" and meta.mics is None and [s.speaker for s in meta.sources] != [None, None]
        # a set without noise says so with a null: read and written back as a null
        assert (meta.noise is None) == (mixture == "mix_clean") and b'"noise":' in data


# -- older corpora: fields written later are optional, and absent stays absent -----------------------
def _paths(obj, prefix=()):
    """Every key path of a JSON object, lists of objects entered at their first item."""
    for k, v in obj.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            yield from _paths(v[0], prefix + (k, 0))


def _without(obj, path):
    obj = json.loads(json.dumps(obj))
    parent = obj
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return obj


@pytest.mark.parametrize("preset", ["av", "debug"])
def test_any_field_a_writer_may_leave_out_may_be_missing_and_stays_missing(preset_samples, preset):
    """A sample without any one optional field (corpora written before it existed, other writers)
    reads and writes back without it; without a required one it is refused, naming the field."""
    stored = json.loads(preset_samples[preset][1]["json"])
    required = {("key",), ("split",), ("index",), ("sample_rate_hz",), ("num_samples",), ("num_speakers",),
                ("num_mics",), ("targets",), ("sources",), ("sources", 0, "speaker"), ("sources", 0, "sir_db"),
                ("mics", "array"), ("mics", "reference"), ("mics", "center_m"), ("mics", "positions_m"),
                ("noise", "kind"), ("noise", "snr_db"), ("storage", "codec"), ("storage", "bits"),
                ("sources", 0, "lips", "kind"), ("sources", 0, "lips", "num_frames")}
    for path in _paths(stored):
        if path == ("duration_s",):
            continue        # computed: written whatever the JSON held
        old = _without(stored, path)
        if path in required:
            with pytest.raises(SchemaError, match=f"lacks {path[-1]}"):
                SampleMeta.from_dict(old)
        else:
            assert_round_trip(encode_json(old))


def test_a_corpus_written_before_storage_and_compressed_lips_reads(preset_samples):
    params, members = preset_samples["av"]
    old = json.loads(members["json"])
    del old["storage"]
    meta = assert_round_trip(encode_json(old))
    assert (meta.stored_as.codec, meta.stored_as.bits) == ("flac", 24) and "storage" not in meta.to_dict()
    names = {"s0.lips.npy", "s0.reverberant.wav", "mix.wav"}
    assert find_member(names, "lips", 0) == "s0.lips.npy"
    assert find_member(names, "reverberant", 0) == "s0.reverberant.wav"
    assert stored_members(names | {"s0.lips.npy.zst"}, "lips", 0) == ["s0.lips.npy.zst", "s0.lips.npy"]
    assert find_member(names, "lips", 1) is None and find_member(names, "noise") is None


# -- member names and targets ------------------------------------------------------------------------------
def test_member_names():
    assert member_name("mix") == "mix.flac" and member_name("noise", codec="wav") == "noise.wav"
    assert [member_name(t, 2, "wav") for t in TARGETS if t != "noise"] == [
        "s2.dry.wav", "s2.direct.wav", "s2.early.wav", "s2.reverberant.wav", "s2.rir.npy", "s2.lips.npy.zst"]
    assert member_name("codec") == "mix.codec.npy" and member_name("codec", 1) == "s1.codec.npy"
    with pytest.raises(ValueError, match="one member per sample"):
        member_name("noise", 0)
    with pytest.raises(ValueError, match="needs a source index"):
        member_name("dry")
    with pytest.raises(ValueError, match="codec must be one of"):
        member_name("mix", codec="mp3")


def test_an_unknown_target_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown target 'late' \(known: dry, direct, early, reverberant, noise, rir, "
                                         r"lips, codec\)"):
        member_name("late", 0)
    members = make_dummy_sample("train", 0)
    bad = json.loads(members["json"])
    bad["targets"].append("late")
    with pytest.raises(SchemaError, match=r"targets: unknown target 'late' \(known: dry, direct"):
        SampleMeta.from_dict(bad)
    from hubbub.shards.reader import ShardDataset

    corpus = make_dummy_corpus(tmp_path, splits={"train": 1}, seconds=0.25)
    with pytest.raises(ValueError, match="unknown target 'late'"):
        ShardDataset(corpus, "train", targets=("late",))


def test_the_recipe_and_the_schema_share_one_tuple_of_targets():
    import hubbub.shards.format as fmt
    from hubbub.simulate import recipe

    assert recipe.TARGETS is TARGETS and set(recipe.DEFAULT_TARGETS) < set(TARGETS)
    assert not hasattr(fmt, "SOURCE_TARGETS") and not hasattr(fmt, "ALL_TARGETS")


# -- derived values and problems ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples, rate", [(16000, 16000), (19210, 8000), (1, 44100), (0, 8000)])
def test_duration_is_computed_and_a_stored_one_is_never_read(num_samples, rate):
    meta = SampleMeta(key="train_00000000", split="train", index=0, sample_rate_hz=rate, num_samples=num_samples,
                      num_speakers=0, num_mics=1, targets=(), sources=[])
    assert meta.duration_s == num_samples / rate and meta.to_dict()["duration_s"] == num_samples / rate
    stale = {**meta.to_dict(), "duration_s": 99.0}
    assert SampleMeta.from_dict(stale).duration_s == num_samples / rate
    assert "duration_s" not in SampleMeta.from_dict(stale).extra


def test_verify_flags_a_stored_duration_that_disagrees(tmp_path):
    from hubbub.shards.verify import verify_corpus
    from hubbub.testing import make_corpus_from_samples

    members = make_dummy_sample("train", 0, seconds=0.25)
    meta = json.loads(members["json"])
    meta["duration_s"] += 0.5
    report = verify_corpus(make_corpus_from_samples(tmp_path, [{**members, "json": encode_json(meta)}]))
    assert [f.message for f in report.faults] == [f"duration_s {meta['duration_s']} != num_samples / sample_rate_hz"]


def test_every_problem_is_named_once():
    members = make_dummy_sample("train", 0, lips=True, sample_rate_hz=16000)
    bad = json.loads(members["json"])
    bad["num_samples"] = "8000"
    del bad["sources"][1]["sir_db"]
    bad["sources"][0]["lips"]["num_frames"] = 2.5
    bad["room"]["dim_m"] = [1.0, None, 3.0]
    bad["noise"] = []
    with pytest.raises(SchemaError) as caught:
        SampleMeta.from_dict(bad)
    assert caught.value.problems == ['num_samples is "8000", expected an integer',
                                     "sources[0].lips.num_frames is 2.5, expected an integer",
                                     "sources[1] lacks sir_db", "room.dim_m[1] is null, expected a number",
                                     "noise is list, expected an object"]
    with pytest.raises(SchemaError, match="json does not parse"):
        SampleMeta.from_json(b"{not json")
    with pytest.raises(SchemaError, match="storage: bits is 8"):
        SampleMeta.from_dict({**json.loads(members["json"]), "storage": {"codec": "flac", "bits": 8}})


def test_records_built_in_code_write_what_they_hold():
    """Empty optional fields stay out, empty required ones are null; a field given a value after
    reading is written; what the writer does not know is kept in ``extra``."""
    source = Source(speaker="s1", sir_db=None, extra={"offset_s": 0.0})
    assert source.to_dict() == {"speaker": "s1", "sir_db": None, "offset_s": 0.0}
    room = Room.from_dict({"rir_mode": "anechoic", "rt60_s_target": None})
    assert room.to_dict() == {"rir_mode": "anechoic", "rt60_s_target": None}
    room.rt60_s_measured = 0.3
    assert room.to_dict() == {"rir_mode": "anechoic", "rt60_s_target": None, "rt60_s_measured": 0.3}
    assert Room().to_dict() == {}


def test_later_stage_members_are_found_by_the_schema():
    members = {"mix.flac": b"", "mix.codec.npy": encode_npy(np.zeros((2, 3), np.int16)), "s0.codec.npy": b""}
    assert find_member(members, "codec") == "mix.codec.npy" and find_member(members, "codec", 0) == "s0.codec.npy"
    assert find_member(members, "mix") == "mix.flac"


@pytest.mark.parametrize("preset", ["librimix", "whamr"])
def test_read_fields_gives_what_the_whole_record_gives(preset_samples, preset):
    meta = json.loads(preset_samples[preset][1]["json"])
    names = ("num_speakers", "num_samples", "sample_rate_hz", "targets")
    whole = SampleMeta.from_dict(meta)
    assert SampleMeta.read_fields(meta, names) == tuple(getattr(whole, n) for n in names)
    with pytest.raises(SchemaError, match="num_samples is .*expected"):
        SampleMeta.read_fields({**meta, "num_samples": "32000"}, names)
    with pytest.raises(SchemaError, match="lacks num_speakers"):
        SampleMeta.read_fields({k: v for k, v in meta.items() if k != "num_speakers"}, names)

"""Load a hubbub corpus with Hugging Face ``datasets`` (its packaged ``webdataset`` builder).

The call that works with datasets 5.2, offline (the builder ships with ``datasets``)::

    datasets.load_dataset("webdataset", data_files={split: [tar paths of the split]},
                          split=split, features=hf_features(corpus_dir, split))

The explicit ``features`` are needed for two reasons:

* Without them the builder infers a schema from the first 5 samples and refuses a corpus whose
  samples have different members ("... don't share the same prefix or the same types"): any
  corpus with variable speaker counts.
* It would type ``.flac`` members as ``Audio``, which decodes with torchcodec: an ImportError
  where torchcodec is missing, and float samples instead of the stored 24-bit values.

:func:`hf_features` declares FLAC members ``Value("binary")`` (decode them with
:func:`hubbub.shards.format.decode_audio`), the sample JSON ``Json()`` (the builder has parsed it
into a dict) and npy members as nested ``List``s of their dtype (the builder decodes npy itself,
without pickle, after unpacking the zstd frame of a ``.npy.zst`` lip stream as it does any
``.zst`` member). Members a sample lacks (``s2.*`` in a two-speaker mixture) are None.

One loss: ``Json`` stores the JSON through pandas' ujson, which keeps 10 decimals of a float
(``rt60_s_measured`` 0.7026073137004334 comes back as 0.7026073137). Read the shard itself
(:class:`hubbub.shards.reader.ShardDataset`, ``meta``) where the exact values matter.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from hubbub.shards.format import decode_array, is_array_member
from hubbub.shards.writer import load_index


def split_tars(corpus_dir: str | Path, split: str) -> list[str]:
    """Paths of the split's shards, in index order."""
    index = load_index(corpus_dir)
    tars = [str(Path(corpus_dir) / s["name"]) for s in index["shards"] if s["split"] == split]
    if not tars:
        raise ValueError(f"split {split!r} has no shards in {corpus_dir}; it has {sorted(index['splits'])}")
    return tars


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("loading a corpus with Hugging Face datasets needs the `datasets` package: "
                          "pip install 'hubbub[hf]'") from None
    return datasets


def hf_features(corpus_dir: str | Path, split: str):
    """``datasets.Features`` for every member name that occurs in the split (tar headers only,
    plus one instance of each npy member for its dtype and rank), and ``__key__``."""
    datasets = _datasets()

    features = {"__key__": datasets.Value("string")}
    for tar_path in split_tars(corpus_dir, split):
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                field = member.name.partition(".")[2]
                if not member.isfile() or not field or field in features:
                    continue
                if is_array_member(field):
                    array = decode_array(field, tar.extractfile(member).read())
                    feature = datasets.Value(array.dtype.name)
                    for _ in range(array.ndim):
                        feature = datasets.List(feature)
                    features[field] = feature
                elif field == "json":
                    features[field] = datasets.Json()
                else:
                    features[field] = datasets.Value("binary")
    return datasets.Features(features)


def load_hf_dataset(corpus_dir: str | Path, split: str = "train", *, streaming: bool = False,
                    cache_dir: str | Path | None = None):
    """The split as a ``datasets.Dataset`` (or ``IterableDataset`` with ``streaming=True``).

    One row per sample: ``__key__``, ``json`` (dict), ``mix.flac`` and other audio members as
    bytes, npy members as nested lists. Nothing is downloaded; without ``streaming`` the rows are
    converted into Arrow files under ``cache_dir`` (default: the ``datasets`` cache). Example::

        ds = load_hf_dataset("corpora/libri2mix", "train")
        mix, sample_rate_hz = decode_audio(ds[0]["mix.flac"])     # (M, T) float32
    """
    datasets = _datasets()

    return datasets.load_dataset("webdataset", data_files={split: split_tars(corpus_dir, split)}, split=split,
                                 features=hf_features(corpus_dir, split), streaming=streaming,
                                 cache_dir=None if cache_dir is None else str(cache_dir))

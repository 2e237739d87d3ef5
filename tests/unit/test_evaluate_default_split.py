"""`evaluate` without --split/--start: the test split on an archive the model trained on, all gap-free
windows on an archive it never saw (matched conservatively: by URL or by file name)."""

from __future__ import annotations

from types import SimpleNamespace

from convlstm_dist.config import load_config
from convlstm_dist.nowcast import trained_on


def _nc(*sets, version=None):
    return SimpleNamespace(config=load_config(None, list(sets)), info={"data_version": version})


def test_own_archives_by_pin_recipe_or_file_name(tmp_path):
    seen = SimpleNamespace(url=str(tmp_path / "archives" / "knmi.zarr"))
    other = SimpleNamespace(url=str(tmp_path / "archives" / "unseen.zarr"))
    pinned = _nc(version=[{"url": seen.url, "frames": 92}], *["data.archive=elsewhere/knmi.zarr"])
    assert trained_on(pinned, seen) and not trained_on(pinned, other)
    multi = _nc("data.archives=[archives/knmi.zarr, {url: archives/fmi.zarr}]")
    assert trained_on(multi, seen)                                  # same file name, other folder
    assert trained_on(multi, SimpleNamespace(url="s3://b/fmi.zarr"))
    assert not trained_on(multi, other)
    # a model of the default <workdir>/archive.zarr (no archive named anywhere): stay on the test split
    assert trained_on(_nc(), other)

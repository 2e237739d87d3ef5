"""Several archives in one recipe (data.archives): windows, splits, units, weights, pinning, data-check."""

from __future__ import annotations

import numpy as np
import pytest

from convlstm_dist.config import load_config
from convlstm_dist.data import units as U
from convlstm_dist.data.archive import GridSpec, append_frames, create_archive, open_archive
from convlstm_dist.data.memory import MemorySplit
from convlstm_dist.data.mix import epoch_units, units_per_epoch
from convlstm_dist.data.plan import DataPlan
from convlstm_dist.data.quantity import rain_to_norm
from convlstm_dist.data.windows import SplitRule, build_index
from convlstm_dist.errors import UserError
from synthetic import rain_frames

ZR = (223.0, 1.53)


def write(url, frames, t0="2021-06-01T00:00:00", variable="rain_mmh", step_s=300, chunk_t=8):
    n, h, w = frames.shape
    units = U.UNITS[variable]
    zr = ZR if variable == "refl_dbz" else (None, None) if variable == "intensity" else (200.0, 1.6)
    grid = GridSpec(variable=variable, units=units, zr_a=zr[0], zr_b=zr[1], projection="synthetic",
                    pixel_size_m=1000.0, timestep_s=step_s, source="synthetic", shape=(h, w), y=None, x=None)
    create_archive(str(url), grid, chunks=(chunk_t, h, w))
    append(url, frames, np.datetime64(t0, "s"), step_s)


def append(url, frames, t0, step_s=300):
    arc = open_archive(str(url))
    times = (t0 + np.arange(len(frames)) * np.timedelta64(step_s, "s")).astype("datetime64[s]").astype(np.int64)
    stats = U.frame_stats(frames, U.thresholds_in_unit(arc.variable, arc.attrs["zr_a"], arc.attrs["zr_b"]))
    append_frames(str(url), None, frames.astype(np.float32), times, stats)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Two archives of the same rain: `rain.zarr` in mm/h, `dbz.zarr` in dBZ (other grid, later dates)."""
    wd = tmp_path_factory.mktemp("wd")
    rain = rain_frames(40, 40, 48, seed=1)
    write(wd / "rain.zarr", rain)
    dbz_rain = rain_frames(30, 36, 36, seed=2)
    with np.errstate(divide="ignore"):
        dbz = U.rain_mmh_to_dbz(dbz_rain, *ZR)
    dbz[np.isneginf(dbz)] = -32.0
    write(wd / "dbz.zarr", dbz, t0="2021-07-01T00:00:00", variable="refl_dbz")
    return wd, rain, dbz_rain


def cfg_for(extra=(), crop=16):
    return load_config(None, [
        "data.archives=[{url: rain.zarr, split: {block_hours: 1.0, val_every: 2}}, "
        "{url: dbz.zarr, weight: 2, split: {whole: val}}]",
        "data.in_len=3", "data.out_len=2", f"model.height={crop}", f"model.width={crop}", "model.patch=4",
        *extra])


def test_each_archive_keeps_its_own_split_and_windows_never_cross(workdir):
    wd, _, _ = workdir
    plan = DataPlan.from_config(cfg_for(), wd)
    assert [s.url for s in plan.sources] == [str(wd / "rain.zarr"), str(wd / "dbz.zarr")]  # relative -> workdir
    rain, dbz = (open_archive(str(wd / n)) for n in ("rain.zarr", "dbz.zarr"))
    ref = build_index(rain.times, 300, 3, 2, SplitRule(1.0, 2, 0, 0)).starts
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(plan.sources[0].starts[split], ref[split])
    assert plan.sources[1].counts() == {"train": 0, "val": 26, "test": 0}  # whole archive held out
    assert plan.counts() == {"train": len(ref["train"]), "val": len(ref["val"]) + 26, "test": 0}
    assert plan.record["archives"][1]["rule"]["whole"] == "val" and plan.record["timestep_s"] == 300
    # every start indexes a window entirely inside its own archive
    for src, arc in zip(plan.sources, (rain, dbz)):
        for split, st in src.starts.items():
            assert np.all(st + 5 <= len(arc.times))
    # the legacy per-split view names the first archive that has windows in the split
    assert plan.archives["train"].url == rain.url and len(plan.starts["train"]) == len(ref["train"])


def test_batches_mix_archives_in_one_model_unit(workdir):
    """A dBZ and an mm/h archive land in the same model quantity, each converted with its own Z-R."""
    wd, rain_mmh, dbz_rain = workdir
    cfg = cfg_for(["data.archives=[{url: rain.zarr, split: {block_hours: 1.0, val_every: 2}}, "
                   "{url: dbz.zarr, split: {whole: train}}]"])
    plan = DataPlan.from_config(cfg, wd)
    assert plan.variable == "rain_mmh"
    train = plan.memory_splits()["train"]
    batches = list(train.batches(64, seed=0, epoch=0, shuffle=True))
    assert set(batches[0]["src"].tolist()) == {0, 1}  # one batch holds both archives
    b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
    assert b["src"].dtype == np.int16 and set(b["src"].tolist()) == {0, 1}
    assert len(b["src"]) == plan.counts()["train"] == train.n_windows
    for i in range(len(b["src"])):
        truth = rain_mmh if b["src"][i] == 0 else dbz_rain
        t0, cy, cx = int(b["t0"][i]), int(b["cy"][i]), int(b["cx"][i])
        win = truth[t0:t0 + 5, cy:cy + 16, cx:cx + 16]
        want = np.where(np.isfinite(win), rain_to_norm(np.nan_to_num(win)), 0.0)
        got = np.concatenate([b["x"][i], b["y"][i]])[:, 0].astype(np.float32)
        np.testing.assert_allclose(got, want, atol=2e-3)  # float16 rows; dBZ -> mm/h -> rain_norm


def test_weights_repeat_or_subsample_training_windows_deterministically(workdir):
    wd, _, _ = workdir
    cfg = cfg_for(["data.archives=[{url: rain.zarr, weight: 0.5}, {url: dbz.zarr, weight: 2}]",
                   "data.split.whole=train"])
    # every window is train: no validation windows -> refused
    with pytest.raises(UserError, match="val split has no windows"):
        DataPlan.from_config(cfg, wd)
    with pytest.raises(UserError, match="more than once"):
        cfg_for(["data.archives=[{url: rain.zarr, split: {whole: train}}, {url: rain.zarr, split: {whole: val}}]"])
    cfg = cfg_for(["data.archives=[{url: rain.zarr, weight: 0.5, split: {block_hours: 1.0, val_every: 2}}, "
                   "{url: dbz.zarr, weight: 2, split: {whole: train}}]"])
    plan = DataPlan.from_config(cfg, wd)
    n0, n1 = plan.sources[0].counts()["train"], plan.sources[1].counts()["train"]
    train = plan.memory_splits()["train"]
    assert train.n_windows == units_per_epoch(n0, 0.5) + 2 * n1 == round(0.5 * n0) + 2 * n1

    def epoch(e):
        out = [b for b in train.batches(8, seed=3, epoch=e, shuffle=True, crops_per_window=2)]
        return {k: np.concatenate([b[k] for b in out]) for k in out[0]}

    a, again, other = epoch(0), epoch(0), epoch(1)
    for k in a:
        np.testing.assert_array_equal(a[k], again[k])
    assert len(a["t0"]) == 2 * train.n_windows
    assert (a["src"] == 1).sum() == 2 * 2 * n1 and (a["src"] == 0).sum() == 2 * round(0.5 * n0)
    # a window taken twice is cropped differently the second time (draws 2, 3 after 0, 1)
    rows = [(int(c), int(y), int(x)) for s, c, y, x in zip(a["src"], a["t0"], a["cy"], a["cx"]) if s == 1]
    assert len(set(rows)) > len(rows) // 2
    # the subsample of the weight-0.5 archive changes with the epoch
    assert set(a["t0"][a["src"] == 0].tolist()) != set(other["t0"][other["src"] == 0].tolist()) or n0 < 3


def test_one_archive_of_weight_one_is_the_single_archive_epoch(workdir):
    wd, _, _ = workdir
    cfg = load_config(None, [f"data.archive={wd / 'rain.zarr'}", "data.in_len=3", "data.out_len=2",
                             "model.height=16", "model.width=16", "model.patch=4",
                             "data.split.block_hours=1.0", "data.split.val_every=2"])
    plan = DataPlan.from_config(cfg, wd)
    assert plan.record["archive"] == str(wd / "rain.zarr") and "rule" in plan.record  # flat record kept
    multi = plan.memory_splits()["train"]
    single = MemorySplit(plan.archives["train"], plan.starts["train"], 3, 2, (16, 16))
    for m, s in zip(multi.batches(4, 1, 2, True, crops_per_window=2),
                    single.batches(4, 1, 2, True, crops_per_window=2)):
        assert set(m) == set(s) | {"src"} and not m["src"].any()
        for k in s:
            np.testing.assert_array_equal(m[k], s[k])
    units = epoch_units([5], [1.0], 0, 4, shuffle=True)
    np.testing.assert_array_equal(units[:, 1], np.random.default_rng([0, 4, 7919]).permutation(5))


def test_mixed_model_quantities_crop_and_step_are_clear_errors(workdir, tmp_path):
    wd, _, _ = workdir
    write(tmp_path / "mnist.zarr", np.random.default_rng(0).random((20, 40, 40)).astype(np.float32),
          variable="intensity")
    cfg = cfg_for([f"data.archives=[rain.zarr, {tmp_path / 'mnist.zarr'}]"])
    with pytest.raises(UserError, match="different model quantities.*mnist.zarr \\(intensity -> intensity\\)"):
        DataPlan.from_config(cfg, wd)
    with pytest.raises(UserError, match="40x40 .* larger than the grid 36x36 of the archive .*dbz.zarr"):
        DataPlan.from_config(cfg_for(crop=40), wd)  # fits rain.zarr (40x48), not dbz.zarr (36x36)
    write(tmp_path / "slow.zarr", rain_frames(20, 40, 40), step_s=600)
    cfg = cfg_for([f"data.archives=[rain.zarr, {tmp_path / 'slow.zarr'}]"])
    with pytest.raises(UserError, match="different time steps"):
        DataPlan.from_config(cfg, wd)
    with pytest.raises(UserError, match="archive #1 of data.archives .*nope.zarr does not exist"):
        DataPlan.from_config(cfg_for(["data.archives=[rain.zarr, nope.zarr]"]), wd)


def test_config_archive_or_archives_not_both():
    with pytest.raises(UserError, match="not both"):
        load_config(None, ["data.archive=a.zarr", "data.archives=[b.zarr]"])
    cfg = load_config(None, ["data.archives=[b.zarr, {url: c.zarr, weight: 3}]"])
    assert [(e.url, e.weight) for e in cfg.data.archives] == [("b.zarr", 1.0), ("c.zarr", 3.0)]
    with pytest.raises(UserError):
        load_config(None, ["data.archives=[{url: c.zarr, weight: 0}]"])


def test_pinned_version_keeps_the_frames_after_an_append(tmp_path):
    frames = rain_frames(40, 32, 32, seed=5)
    write(tmp_path / "a.zarr", frames[:24])
    write(tmp_path / "b.zarr", frames, t0="2022-01-01T00:00:00")
    cfg = load_config(None, ["data.archives=[a.zarr, b.zarr]", "data.in_len=3", "data.out_len=2",
                             "model.height=16", "model.width=16", "model.patch=4",
                             "data.split.block_hours=0.5", "data.split.val_every=2"])
    first = DataPlan.from_config(cfg, tmp_path)
    version = first.version()
    assert version[0]["frames"] == 24 and version[0]["last_time"] == "2021-06-01T01:55:00"
    assert len(version[0]["meta_sha256"]) == 64 and version[1]["frames"] == 40
    import json

    json.dumps(version)  # JSON-able, as stored with the run

    # the archive grows (the ingest path: append-only, after the last frame)
    append(tmp_path / "a.zarr", frames[24:], np.datetime64("2021-06-01T02:00:00", "s"))
    pinned = DataPlan.from_config(cfg, tmp_path, pinned=version)
    unpinned = DataPlan.from_config(cfg, tmp_path)
    assert pinned.version() == version and pinned.counts() == first.counts()
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(pinned.sources[0].starts[s], first.sources[0].starts[s])
    assert unpinned.version()[0]["frames"] == 40 and unpinned.counts()["train"] > first.counts()["train"]
    # the pin travels with the archive to readers (Ray tasks): no read beyond the pinned frames
    import pickle

    arc = pickle.loads(pickle.dumps(pinned.sources[0].archives["train"]))
    assert arc.shape[0] == 24
    with pytest.raises(IndexError):
        arc.read(20, 26)
    batches = list(pinned.memory_splits()["train"].batches(64, 0, 0, True))
    assert max(int(t) for b in batches for t, s in zip(b["t0"], b["src"]) if s == 0) + 5 <= 24

    # a pin the archive cannot honour fails clearly
    too_long = [dict(version[0], frames=99), version[1]]
    with pytest.raises(UserError, match="fewer than the 99 pinned"):
        DataPlan.from_config(cfg, tmp_path, pinned=too_long)
    moved = [dict(version[0], last_time="2021-06-01T01:50:00"), version[1]]
    with pytest.raises(UserError, match="changed under this run"):
        DataPlan.from_config(cfg, tmp_path, pinned=moved)
    with pytest.raises(UserError, match="not in the pinned data version"):
        DataPlan.from_config(cfg, tmp_path, pinned=version[:1])
    other_meta = [dict(version[0], meta_sha256="0" * 64), version[1]]
    with pytest.raises(UserError, match="metadata"):
        DataPlan.from_config(cfg, tmp_path, pinned=other_meta)


def test_data_check_lists_windows_per_archive(workdir):
    from convlstm_dist.commands.data_check import format_windows

    wd, _, _ = workdir
    plan = DataPlan.from_config(cfg_for(), wd)
    text = format_windows(plan)
    lines = text.splitlines()
    assert "src" in lines[1] and "weight" in lines[1]
    rain_row = next(line for line in lines if "rain.zarr" in line).split()
    dbz_row = next(line for line in lines if "dbz.zarr" in line).split()
    c0, c1 = plan.sources[0].counts(), plan.sources[1].counts()
    assert c1 == {"train": 0, "val": 26, "test": 0}
    assert rain_row[0] == "0" and [int(v) for v in rain_row[3:]] == [c0["train"], c0["val"], c0["test"]]
    assert dbz_row[0] == "1" and dbz_row[2] == "2" and [int(v) for v in dbz_row[3:]] == [0, 26, 0]
    total = lines[-1].split()
    assert total[0] == "total" and [int(v) for v in total[1:]] == list(plan.counts().values())


@pytest.mark.integration
def test_ray_datasets_read_per_archive_with_src_and_weights(workdir, ray_local):
    wd, _, _ = workdir
    cfg = cfg_for(["data.archives=[{url: rain.zarr, split: {block_hours: 1.0, val_every: 2}}, "
                   "{url: dbz.zarr, weight: 2, split: {whole: train}}]"])
    plan = DataPlan.from_config(cfg, wd)
    ds = plan.datasets(seed=0, clock_name=None)
    train = ds["train"].take_all()
    got = sorted((int(r["src"]), int(r["t0"])) for r in train)
    # weight 2: every chunk group of dbz.zarr is read twice (differently cropped), rain.zarr once
    want = sorted([(0, int(t)) for t in plan.sources[0].starts["train"]]
                  + 2 * [(1, int(t)) for t in plan.sources[1].starts["train"]])
    assert got == want
    val = ds["val"].take_all()
    assert sorted(int(r["t0"]) for r in val) == plan.sources[0].starts["val"].tolist()
    assert {int(r["src"]) for r in val} == {0} and val[0]["x"].dtype == np.float16
    # the memory path reads the same validation windows with the same crops
    mem = list(plan.memory_splits()["val"].batches(128, cfg.data.seed + 10_000, 0, False))[0]
    by_t0 = {int(r["t0"]): r for r in val}
    for i, t0 in enumerate(mem["t0"]):
        assert (int(mem["cy"][i]), int(mem["cx"][i])) == (int(by_t0[int(t0)]["cy"]), int(by_t0[int(t0)]["cx"]))


def test_training_logs_validation_skill_per_archive_and_pooled(workdir):
    """A multi-archive run reports the pooled val metrics and ``val.<archive>.<metric>`` per archive,
    whose windows add up to the pooled ones."""
    from convlstm_dist.train.local import train_local

    wd, _, _ = workdir
    cfg = cfg_for(["model.hidden=[4]", "model.input_kernel=[3]", "model.state_kernel=[3]", "train.epochs=1",
                   "data.batch_size=4", "tracking.enabled=false", "run.name=per-archive"])
    out = train_local(cfg, wd, device="cpu", progress=False)
    m = out.history[-1]
    assert {"val.rain.mse", "val.dbz.mse", "val.rain.csi_0.5mmh", "val.dbz.persistence_csi_2mmh"} <= set(m)
    # the pooled squared error is the pixel-weighted mean of the archives' (each window scored once)
    plan = DataPlan.from_config(cfg, wd)
    assert plan.source_names() == ["rain", "dbz"]
    lo, hi = sorted((m["val.rain.mse"], m["val.dbz.mse"]))
    assert lo - 1e-9 <= m["val_mse"] <= hi + 1e-9

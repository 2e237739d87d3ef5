"""`convlstm-dist evaluate` / `nowcast` end to end on a synthetic archive with a tiny random-weight model:
CSV rows per method/lead/threshold, persistence MSE against an independent numpy computation,
the forecast Zarr read back by xarray, clear errors (exit 2), and one run on a real S3 server."""

import csv
import uuid

import numpy as np
import pytest
import xarray as xr

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.cli import main
from convlstm_dist.config import build_model_from_config, load_config
from synthetic import make_archive

pytestmark = pytest.mark.integration
IN_LEN, OUT_LEN, STEP_S = 3, 2, 300
THRESHOLDS = (0.5, 2.0, 5.0, 10.0, 30.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(None, ["name=tiny", "model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3",
                             "model.patch=4", "model.height=16", "model.width=16",
                             f"data.in_len={IN_LEN}", f"data.out_len={OUT_LEN}"])
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(d, build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")
    return d


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    url = tmp_path_factory.mktemp("arc") / "rain.zarr"
    frames = make_archive(url, n=24, h=48, w=48, step_s=STEP_S)
    return str(url), frames


def persistence_mse(frames, with_flow: bool = False):
    """Independent numpy MSE of persistence per lead over every window of the archive (no gaps).

    ``with_flow``: optical flow is scored too, so every method is scored only where optical flow
    also has a forecast (one verification sample for all methods)."""
    from convlstm_dist.verify import run_baseline

    length = IN_LEN + OUT_LEN
    se, n = np.zeros(OUT_LEN), np.zeros(OUT_LEN)
    for t0 in range(len(frames) - length + 1):
        last = frames[t0 + IN_LEN - 1]
        flow = run_baseline("optical_flow", frames[None, t0:t0 + IN_LEN], OUT_LEN)[0] if with_flow else None
        for k in range(OUT_LEN):
            obs = frames[t0 + IN_LEN + k]
            ok = np.isfinite(obs) & np.isfinite(last)
            if flow is not None:
                ok &= np.isfinite(flow[k])
            se[k] += ((last[ok].astype(np.float64) - obs[ok]) ** 2).sum()
            n[k] += ok.sum()
    return se / n


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_local(ray_local, ckpt, archive, tmp_path, capsys):
    url, frames = archive
    out = tmp_path / "eval" / "skill.csv"
    rc = main(["evaluate", "--model", str(ckpt), "--archive", url, "--start", "2021-06-01T00:00",
               "--out", str(out), "--workers", "2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
               "--workdir", str(tmp_path)])
    captured = capsys.readouterr()
    stdout = captured.out
    assert rc == 0, stdout
    assert "threshold >= 0.5 mm/h" in stdout and "mse:persistence" in stdout
    # progress on stderr (not a terminal here): one line per chunk of at most 4 windows, up to 20/20
    progress = [ln for ln in captured.err.splitlines() if "windows scored" in ln]
    assert len(progress) == 5 and progress[-1].startswith("[evaluate] 20/20 windows scored (5/5 tasks)"), captured.err
    rows = read_rows(out)
    assert list(rows[0])[:9] == ["method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae"]
    keys = {(r["method"], float(r["lead_min"]), float(r["threshold_mmh"])) for r in rows}
    # every default baseline that can run on IN_LEN=3 input frames; ANVIL (4 frames) is left out, and said so
    assert keys == {(m, 5.0 * (k + 1), t) for m in ("convlstm", "persistence", "optical_flow", "sprog")
                    for k in range(OUT_LEN) for t in THRESHOLDS}
    assert "anvil needs 4 input frames, the model has 3: left out" in captured.err
    fss = [float(r["fss_16km"]) for r in rows if float(r["threshold_mmh"]) == 0.5]
    assert fss and all(0.0 <= v <= 1.0 for v in fss)  # FSS at 0.5 mm/h for every method and lead
    assert out.with_suffix(".png").stat().st_size > 1000
    mse = {float(r["lead_min"]): float(r["mse"]) for r in rows if r["method"] == "persistence"}
    np.testing.assert_allclose([mse[5.0], mse[10.0]], persistence_mse(frames, with_flow=True), rtol=1e-5)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("evaluate-tiny")
    run = client.search_runs([exp.experiment_id])[0]
    assert "persistence_mse" in run.data.metrics and run.info.status == "FINISHED"
    # the forecast figure of the wettest window, beside the CSV and in the run
    case = out.with_name("skill-case.png")
    assert case.stat().st_size > 1000 and f"forecast figure (wettest window) {case}" in stdout
    assert "skill-case.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_evaluate_with_probability_matching(ray_local, ckpt, archive, tmp_path, capsys):
    url, _ = archive
    out = tmp_path / "pm.csv"
    rc = main(["evaluate", "--model", str(ckpt), "--archive", url, "--start", "2021-06-01T00:00", "--out", str(out),
               "--baselines", "persistence", "--probability-matching", "--workers", "2",
               "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    rows = read_rows(out)
    assert {r["method"] for r in rows} == {"convlstm", "convlstm_pm", "persistence"}
    raw = {(r["lead_min"], r["threshold_mmh"]): r for r in rows if r["method"] == "convlstm"}
    pm = {(r["lead_min"], r["threshold_mmh"]): r for r in rows if r["method"] == "convlstm_pm"}
    assert raw.keys() == pm.keys()
    assert any(raw[k]["mse"] != pm[k]["mse"] for k in raw)  # a different forecast, scored on the same windows

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("evaluate-tiny").experiment_id])[0]
    assert "convlstm_pm_mse" in run.data.metrics


def test_evaluate_motion_shared_or_own(ray_local, ckpt, archive, tmp_path, capsys):
    """``--motion shared`` (default): the crop's slice of one whole-frame field moves optical flow;
    ``--motion own``: optical flow estimates its motion from the 24x24 crop alone. Same windows and
    crops, different forecasts; the run says which."""
    import mlflow

    url, _ = archive
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flow = {}
    for motion in ("shared", "own"):
        out = tmp_path / f"{motion}.csv"
        rc = main(["evaluate", "--model", str(ckpt), "--archive", url, "--start", "2021-06-01T00:00", "--out", str(out),
                   "--baselines", "optical_flow", "--crop", "24x24", "--motion", motion, "--max-windows", "4",
                   "--workers", "1", "--tracking-uri", uri, "--workdir", str(tmp_path)])
        assert rc == 0, capsys.readouterr().out
        flow[motion] = {(r["lead_min"], r["threshold_mmh"]): float(r["mse"]) for r in read_rows(out)
                        if r["method"] == "optical_flow"}
    assert flow["shared"].keys() == flow["own"].keys()
    assert any(flow["shared"][k] != flow["own"][k] for k in flow["own"])
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("evaluate-tiny").experiment_id])
    assert sorted(r.data.params["motion"].split(":")[0] for r in runs) == ["own", "shared"]


def test_out_of_memory_is_a_clear_error_not_endless_retries(ckpt, archive, tmp_path):
    """Ray's memory monitor with a 1% threshold kills every evaluation task: the command must stop
    after one retry with a message that says what to do (Ray alone retries OOM kills forever)."""
    import os
    import subprocess
    import sys

    url, _ = archive
    env = {**os.environ, "RAY_memory_usage_threshold": "0.01"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", "evaluate", "--model", str(ckpt),
                           "--archive", url, "--start", "2021-06-01T00:00", "--baselines", "persistence",
                           "--no-mlflow", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.csv")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "evaluation ran out of memory" in proc.stderr and "--crop" in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def test_nowcast_writes_zarr(ckpt, archive, tmp_path, capsys):
    url, frames = archive
    rc = main(["nowcast", "--model", str(ckpt), "--archive", url, "--out", str(tmp_path / "fc"),
               "--n-out", "4", "--at", "2021-06-01T01:00:00", "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    ds = xr.open_zarr(tmp_path / "fc" / "forecast.zarr", decode_timedelta=False)
    assert ds["rain_mmh"].dims == ("forecast_reference_time", "forecast_period", "y", "x")
    assert ds["rain_mmh"].shape == (1, 4, 48, 48)
    assert ds["forecast_period"].values.tolist() == [5.0, 10.0, 15.0, 20.0]
    assert ds["forecast_reference_time"].values[0] == np.datetime64("2021-06-01T01:00:00")
    fc = ds["rain_mmh"].values[0]
    # finite exactly where the analysis frame (index 12) has data: its NaN border stays no data
    assert ds.attrs["timestep_s"] == STEP_S and np.array_equal(np.isfinite(fc), np.isfinite(frames[[12] * 4]))
    assert (tmp_path / "fc" / "forecast.png").stat().st_size > 1000


def test_nowcast_figure_has_inputs_observed_model_and_flow_per_lead_in_minutes(ckpt, archive, tmp_path, monkeypatch,
                                                                              capsys):
    """The analysis time is not the archive's last frame: the frames after it are drawn as observed."""
    from convlstm_dist.verify import figures

    drawn = []
    real = figures.build_forecast_figure

    def keep(**fields):  # the real figure, kept to read its panels
        drawn.append(real(**fields))
        return drawn[-1]

    monkeypatch.setattr(figures, "build_forecast_figure", keep)
    url, _ = archive
    rc = main(["nowcast", "--model", str(ckpt), "--archive", url, "--out", str(tmp_path / "fc"), "--gif",
               "--n-out", "3", "--at", "2021-06-01T01:00:00", "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    assert titles == (["input -10 min", "input -5 min", "input 0 min"]
                      + [f"{row} +{m} min" for row in ("observed", "tiny", "optical flow") for m in (5, 10, 15)])
    assert (tmp_path / "fc" / "forecast.png").stat().st_size > 1000
    from PIL import Image

    with Image.open(tmp_path / "fc" / "forecast.gif") as gif:
        assert gif.n_frames == 3


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "models:/no-such-model/1"], "cannot load model 'models:/no-such-model/1'"),
    (["evaluate", "--model", "/nonexistent/ckpt"], "no checkpoint"),
    (["evaluate", "--model", "CKPT", "--split", "test"], "too few frames"),
    (["nowcast", "--model", "CKPT", "--at", "2021-06-01T00:05"], "too few frames"),
])
def test_clear_errors(ckpt, archive, tmp_path, capsys, argv, message):
    url, _ = archive
    argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    rc = main(argv + ["--archive", url, "--workdir", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_evaluate_and_nowcast_on_a_grid_the_patch_does_not_divide(ray_local, ckpt, tmp_path, capsys):
    """A 30x22 archive (patch 4, NaN top rows) without --crop: evaluate scores the full grid (the model
    padded to 32x24 and cropped back, persistence exactly as numpy computes it on 30x22) and nowcast
    writes a 30x22 forecast."""
    url = tmp_path / "odd.zarr"
    frames = make_archive(url, n=8, h=30, w=22, step_s=STEP_S)
    out = tmp_path / "odd.csv"
    rc = main(["evaluate", "--model", str(ckpt), "--archive", str(url), "--start", "2021-06-01",
               "--baselines", "persistence", "--workers", "1", "--out", str(out), "--no-mlflow",
               "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    rows = read_rows(out)
    assert {r["method"] for r in rows} == {"convlstm", "persistence"}
    assert all(np.isfinite(float(r["mse"])) for r in rows if r["method"] == "convlstm")
    mse = {float(r["lead_min"]): float(r["mse"]) for r in rows if r["method"] == "persistence"}
    np.testing.assert_allclose([mse[5.0], mse[10.0]], persistence_mse(frames), rtol=1e-5)

    rc = main(["nowcast", "--model", str(ckpt), "--archive", str(url), "--out", str(tmp_path / "fc"),
               "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    fc = xr.open_zarr(tmp_path / "fc" / "forecast.zarr")["rain_mmh"].values
    assert fc.shape == (1, OUT_LEN, 30, 22)
    assert np.array_equal(np.isfinite(fc[0]), np.isfinite(frames[[-1] * OUT_LEN]))  # the NaN rows stay NaN


def test_evaluate_too_few_frames_short_archive(ckpt, tmp_path, capsys):
    url = tmp_path / "short.zarr"
    make_archive(url, n=4, h=16, w=16)
    rc = main(["evaluate", "--model", str(ckpt), "--archive", str(url), "--workdir", str(tmp_path), "--no-mlflow"])
    assert rc == 2 and "too few frames" in capsys.readouterr().err


def test_evaluate_s3(ray_local, s3_server, ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    url = f"s3://{s3_server.bucket}/eval-{uuid.uuid4().hex[:8]}.zarr"
    frames = make_archive(url, n=12, h=48, w=48, step_s=STEP_S, storage_options=s3_server.storage_options())
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "s3.csv"
    rc = main(["evaluate", "--model", str(ckpt), "--archive", url, "--endpoint-url", s3_server.endpoint_url,
               "--start", "2021-06-01", "--baselines", "persistence", "--out", str(out), "--no-mlflow",
               "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    mse = {float(r["lead_min"]): float(r["mse"]) for r in read_rows(out) if r["method"] == "persistence"}
    np.testing.assert_allclose([mse[5.0], mse[10.0]], persistence_mse(frames), rtol=1e-5)


def dbz_archive(url, frames, zr):
    from convlstm_dist.data import units as U
    from convlstm_dist.data.archive import GridSpec, append_frames, create_archive

    n, h, w = frames.shape
    dbz = U.rain_mmh_to_dbz(np.where(np.isfinite(frames), frames, np.nan), 200.0, 1.6).astype(np.float32)
    times = (np.datetime64("2021-06-01T00:00:00", "s") + np.arange(n) * np.timedelta64(STEP_S, "s")).astype(np.int64)
    grid = GridSpec(variable="refl_dbz", units="dBZ", zr_a=zr[0], zr_b=zr[1], projection="synthetic",
                    pixel_size_m=1000.0, timestep_s=STEP_S, source="synthetic", shape=(h, w), y=None, x=None)
    create_archive(str(url), grid, chunks=(8, h, w))
    thr = U.rain_mmh_to_dbz(U.wet_thresholds("rain_mmh"), 200.0, 1.6)
    append_frames(str(url), None, dbz, times, U.frame_stats(dbz, thr))
    return dbz


def test_rain_model_on_dbz_archive(ray_local, ckpt, archive, tmp_path, capsys):
    _, frames = archive
    url = tmp_path / "dbz.zarr"
    dbz_archive(url, frames, (200.0, 1.6))
    out = tmp_path / "dbz.csv"
    rc = main(["evaluate", "--model", str(ckpt), "--archive", str(url), "--start", "2021-06-01",
               "--baselines", "persistence", "--out", str(out), "--no-mlflow", "--workdir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    mse = {float(r["lead_min"]): float(r["mse"]) for r in read_rows(out) if r["method"] == "persistence"}
    # scored in mm/h after the archive's own Z–R conversion: the same as on the rain archive
    np.testing.assert_allclose([mse[5.0], mse[10.0]], persistence_mse(frames), rtol=1e-3)


def test_dbz_archive_without_zr_is_a_clear_error(ckpt, archive, tmp_path, capsys):
    _, frames = archive
    url = tmp_path / "nozr.zarr"
    dbz_archive(url, frames[:8], (None, None))
    rc = main(["evaluate", "--model", str(ckpt), "--archive", str(url), "--start", "2021-06-01",
               "--no-mlflow", "--workdir", str(tmp_path)])
    assert rc == 2 and "Z-R" in capsys.readouterr().err


def test_nowcaster_from_mlflow(tmp_path):
    """A model registered the way the training driver does (log_model of a checkpoint: state dict +
    config) loads by name, models:/ URI and runs:/ URI, with the config recovered from the model."""
    from convlstm_dist.config import to_yaml
    from convlstm_dist.nowcast.nowcaster import Nowcaster
    from convlstm_dist.tracking.mlflow_tracker import Tracker

    cfg = load_config(None, ["name=tiny-mlflow", "model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4", "model.height=16",
                             "model.width=16", f"data.in_len={IN_LEN}", f"data.out_len={OUT_LEN}"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker, _ = Tracker.start_or_resume(uri, "tiny-mlflow", "tiny-mlflow")
    tracker.log_text(to_yaml(cfg), "config.yaml")
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")
    assert tracker.log_model(ckpt.parent, "tiny-mlflow") == "models:/tiny-mlflow/1"
    tracker.end()
    frames = np.random.default_rng(0).gamma(0.5, 2.0, size=(IN_LEN, 16, 16)).astype(np.float32)
    outs = []
    for ref in ("tiny-mlflow", "models:/tiny-mlflow/1", f"runs:/{tracker.run_id}/model"):
        nc = Nowcaster.load(ref, tracking_uri=uri)
        assert nc.quantity == "rain_norm" and nc.in_len == IN_LEN and nc.patch == 4, ref
        outs.append(nc.predict(frames))
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)

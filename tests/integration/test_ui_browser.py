"""The MLflow UI in a real headless browser, on a real training run: the demo (`convlstm-dist demo`,
shortened to 2 epochs) logs to a real MLflow server; the browser finds the run on its experiment
page, opens it, and the run page shows
* the `val_loss` chart, plotting exactly the run's val_loss history (read back from the chart's
  Plotly data and compared with MLflow's metric history), and
* the run's `forecast.png` artifact as an image whose bytes are those of the logged file
  (SHA-256 of the image the page loaded vs. the artifact downloaded with the MLflow client).

Needs Debian's Chromium and the Playwright Python package (never `playwright install`):
    apt-get install -y chromium
    pip install playwright
Skipped with the reason when either is missing. Screenshots go to tests/artifacts/ (for people;
the assertions read the page itself).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000  # a loaded 2-core CI box renders the UI slowly
EPOCHS = 2  # two points: the chart must show a history, not one value
DEMO_TIMEOUT_S = 420  # ~60 s alone on 2 cores
RUN_NAME = EXPERIMENT = "demo-knmi"  # the demo recipe's name: run and experiment are named after it

# Plotly keeps the plotted traces on the chart's element (`gd.data`)
PLOTTED = "gd => (gd.data || []).map(t => ({x: Array.from(t.x || []), y: Array.from(t.y || [])}))"
# SHA-256 of what an <img> loaded (its blob: URL), computed in the page
IMG_SHA256 = """async img => {
    const buf = await (await fetch(img.src)).arrayBuffer();
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
    return Array.from(d, b => b.toString(16).padStart(2, '0')).join('');
}"""


def _browser_or_skip():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM=/path)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright Python package missing: pip install playwright (browsers are NOT needed: "
                    "do not run `playwright install`, Debian's chromium is used)")


def _train_demo(uri: str, tmp: Path):
    """Run the real demo (ingest the shipped sample, 2 Ray Train workers) logging to `uri`."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
           "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "convlstm_dist.cli", "demo", "--workdir", str(tmp / "demo"),
           "--set", f"train.epochs={EPOCHS}"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    print(f"demo ({EPOCHS} epochs) in {time.monotonic() - t0:.1f} s")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in runs] == [RUN_NAME] and runs[0].info.status == "FINISHED", runs
    run_id = runs[0].info.run_id
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_loss"))
    assert [s for s, _ in history] == list(range(1, EPOCHS + 1)), history
    png = Path(client.download_artifacts(run_id, "forecast.png", str(tmp / "dl")))
    return exp.experiment_id, run_id, history, hashlib.sha256(png.read_bytes()).hexdigest()


def test_mlflow_ui_shows_demo_run_chart_and_forecast(tmp_path):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    from convlstm_dist.tracking.server import MlflowServer

    SHOTS.mkdir(parents=True, exist_ok=True)
    with MlflowServer(tmp_path / "mlflow", log_path=tmp_path / "mlflow.log") as srv:
        exp_id, run_id, history, png_sha = _train_demo(srv.uri, tmp_path)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(TIMEOUT_MS)
                t0 = time.monotonic()
                try:
                    # experiment page: the demo's run is listed; open it as a user would
                    page.goto(f"{srv.uri}/#/experiments/{exp_id}/runs", wait_until="domcontentloaded")
                    link = page.locator(f"a[href*='/runs/{run_id}']").filter(has_text=RUN_NAME).first
                    link.wait_for(state="visible")
                    page.screenshot(path=str(SHOTS / "mlflow_experiment.png"))
                    link.click()
                    page.wait_for_url(f"**/runs/{run_id}**")
                    print(f"run page in {time.monotonic() - t0:.1f} s")

                    # metric charts: the val_loss chart plots the run's val_loss history
                    page.get_by_role("tab", name="Model metrics").click()
                    page.get_by_placeholder("Search metric charts").fill("val_loss")
                    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                        has=page.locator("h4[title='val_loss']"))
                    plot = card.locator(".js-plotly-plot")
                    plot.wait_for(state="visible")
                    traces = plot.evaluate(PLOTTED)
                    assert traces, "the val_loss chart plots nothing"
                    for t in traces:
                        assert t["x"] == [s for s, _ in history], (t, history)
                        assert t["y"] == pytest.approx([v for _, v in history], rel=1e-9), (t, history)
                    assert card.locator(".scatterlayer .point").count() >= len(history)
                    assert card.get_by_text(f"{RUN_NAME} (val_loss)").is_visible()  # the legend names the run
                    card.screenshot(path=str(SHOTS / "mlflow_val_loss_chart.png"))

                    # artifacts: forecast.png is listed and shown, and the shown image is that file
                    page.get_by_role("tab", name="Artifacts").click()
                    page.get_by_text("forecast.png", exact=True).first.click()
                    img = page.locator("img[src^='blob:']").first
                    img.wait_for(state="visible")
                    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
                    assert img.evaluate(IMG_SHA256) == png_sha, "the page shows another image than forecast.png"
                    page.screenshot(path=str(SHOTS / "mlflow_artifacts.png"))
                    print(f"UI checks done in {time.monotonic() - t0:.1f} s")
                except Exception:
                    page.screenshot(path=str(SHOTS / "mlflow_failure.png"), full_page=True)
                    raise
            finally:
                browser.close()

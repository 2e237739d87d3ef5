"""The MLflow UI in a real headless browser: a run with validation metrics and a forecast figure
is visible on its experiment and run pages.

Needs Debian's Chromium and the Playwright Python package (never `playwright install`):
    apt-get install -y chromium
    pip install playwright
Skipped with the reason when either is missing. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# MLflow 3 opens experiments as GenAI (traces) unless they are tagged as model training
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
TIMEOUT_MS = 90_000  # a loaded 2-core CI box renders the UI slowly


def _browser_or_skip():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM=/path)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright Python package missing: pip install playwright (browsers are NOT needed: "
                    "do not run `playwright install`, Debian's chromium is used)")


def _log_run(uri: str, tmp: Path) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient
    from PIL import Image, ImageDraw

    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("ui-browser-test", tags=EXPERIMENT_TAGS)
    run_id = client.create_run(exp_id, run_name="radar-smoke-ui").info.run_id
    client.log_param(run_id, "model.hidden", "[16, 16]")
    for step, (loss, csi) in enumerate([(0.9, 0.10), (0.6, 0.21), (0.45, 0.33)]):
        client.log_metric(run_id, "val_loss", loss, step=step)
        client.log_metric(run_id, "val_csi_2mmh", csi, step=step)
    img = Image.new("RGB", (160, 120), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((40, 30, 120, 90), fill=(40, 110, 220))
    png = tmp / "forecast.png"
    img.save(png)
    client.log_artifact(run_id, str(png))
    client.set_terminated(run_id)
    return exp_id, run_id


def test_mlflow_ui_shows_run_metrics_and_figure(tmp_path):
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    from convlstm_dist.tracking.server import MlflowServer

    SHOTS.mkdir(parents=True, exist_ok=True)
    with MlflowServer(tmp_path / "wd", log_path=tmp_path / "mlflow.log") as srv:
        exp_id, run_id = _log_run(srv.uri, tmp_path)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(TIMEOUT_MS)
                t0 = time.monotonic()
                try:
                    # experiment page: the run is listed
                    page.goto(f"{srv.uri}/#/experiments/{exp_id}/runs", wait_until="domcontentloaded")
                    page.get_by_text("radar-smoke-ui").first.wait_for()
                    page.screenshot(path=str(SHOTS / "mlflow_experiment.png"))
                    print(f"experiment page in {time.monotonic() - t0:.1f} s")

                    # run page, reached by clicking the run as a user would
                    page.get_by_text("radar-smoke-ui").first.click()
                    page.wait_for_url(f"**/runs/{run_id}**")
                    for name in ("val_loss", "val_csi_2mmh"):
                        page.get_by_text(name, exact=True).first.wait_for(state="visible")
                    page.get_by_text("val_csi_2mmh", exact=True).first.scroll_into_view_if_needed()
                    page.screenshot(path=str(SHOTS / "mlflow_run.png"))

                    # artifacts tab: the forecast figure is listed
                    page.get_by_role("tab", name="Artifacts").click()
                    page.get_by_text("forecast.png").first.wait_for(state="visible")
                    page.get_by_text("forecast.png").first.click()
                    page.screenshot(path=str(SHOTS / "mlflow_artifacts.png"))
                    print(f"UI checks done in {time.monotonic() - t0:.1f} s")
                except Exception:
                    page.screenshot(path=str(SHOTS / "mlflow_failure.png"), full_page=True)
                    raise
            finally:
                browser.close()
    for name in ("mlflow_experiment.png", "mlflow_run.png", "mlflow_artifacts.png"):
        assert (SHOTS / name).stat().st_size > 1000

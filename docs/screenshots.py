"""Regenerate the README's screenshots of the review page and the scan report.

    .venv/bin/python docs/screenshots.py            # about 2 minutes on 2 cores

Scans data_samples/batch_03_impossible_and_outliers.csv with ``poisonguard scan`` (default
detectors) into a temporary workspace, serves the review page from it, and photographs with the
system's headless Chromium (Debian: ``apt-get install chromium chromium-driver``):

    docs/review-page.png   a batch's quarantined rows, just after a steward rejected one
    docs/review-row.png    a row beside its nearest trusted rows, with the release/reject form
    docs/report.png        the scan's report.html
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples"
BATCH = SAMPLES / "batch_03_impossible_and_outliers.csv"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH = 1280
MAX_BYTES = 300_000


def scan(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """A real scan into root/workspace; returns (workspace, out, environment)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "POISONGUARD_DATABASE_URL", "POISONGUARD_WORKSPACE")
    }
    env["POISONGUARD_USER"] = "ingest-bot"
    workspace, out = root / "workspace", root / "out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "scan",
            str(BATCH),
            "--reference",
            str(SAMPLES / "reference.parquet"),
            "--label",
            "deny",
            "--holdout",
            str(SAMPLES / "holdout.parquet"),
            "--suite",
            str(REPO / "expectations" / "hmda.json"),
            "--source",
            "partner-feed",
            "--dataset",
            "hmda",
            "--workspace",
            str(workspace),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        check=True,
    )
    return workspace, out, env


def serve(app) -> tuple[str, object]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={WIDTH},1000",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def shoot(driver, path: Path, height: int | None = None) -> None:
    """A WIDTH × height PNG of the top of the current page (the whole page, up to 1500 px, when
    no height is given), made small enough for a README."""
    from PIL import Image

    if height is None:
        height = min(1500, driver.execute_script("return document.documentElement.scrollHeight") + 16)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    image = Image.open(path)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:  # text on flat colours loses nothing visible in 256 colours
        image.convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path} ({image.width}x{image.height}, {path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="Folder for the PNGs (default docs/).")
    args = parser.parse_args()
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        sys.exit(
            "docs/screenshots.py: needs /usr/bin/chromium and /usr/bin/chromedriver "
            "(apt-get install -y chromium chromium-driver)"
        )
    sys.path.insert(0, str(REPO))
    from selenium.webdriver.common.by import By

    from pipeline.config import Settings
    from pipeline.ui import create_app

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="poisonguard-screenshots-") as tmp:
        workspace, out, env = scan(Path(tmp))
        token = secrets.token_urlsafe(24)
        app = create_app(Settings.from_environment(workspace, env), token)
        base, server = serve(app)
        driver = chromium()
        try:
            shoot_report(driver, out / "report.html", args.out / "report.png")
            driver.get(base + "/")
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.CSS_SELECTOR, ".signin button[type=submit]").click()
            (batch,) = app.state.ledger.list_batches()
            pending = sorted(
                app.state.ledger.list_rows(batch_id=batch.id, status="pending"), key=lambda r: (-r.suspicion, r.row_number)
            )

            def first(words: str, *, besides=()):
                return next(
                    (r for r in pending if words in " ".join(r.reasons) and r not in besides),
                    next(r for r in pending if r not in besides),
                )

            impossible = first("cannot exceed")
            flipped = first("nearest trusted neighbours", besides=(impossible,))
            outlier = first("outlier:", besides=(impossible, flipped))
            review_row(driver, base, flipped.id, "j.moreau", "Denial confirmed with the lender's file: the label is right.")
            review_in_batch(
                driver,
                base,
                batch.id,
                impossible.id,
                "j.moreau",
                "Housing expense above total debt: a data-entry error, not a real application.",
            )
            shoot(driver, args.out / "review-page.png", 900)
            driver.get(f"{base}/rows/{outlier.id}")
            shoot(driver, args.out / "review-row.png")
        finally:
            driver.quit()
            server.should_exit = True
            app.state.ledger.close()


def review_row(driver, base: str, row_id: str, by: str, reason: str) -> None:
    """Release a row from its own page."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/rows/{row_id}")
    fill(driver, by, reason)
    driver.find_element(By.CSS_SELECTOR, "button.release").click()


def review_in_batch(driver, base: str, batch_id: str, row_id: str, by: str, reason: str) -> None:
    """Reject a row ticked on its batch's page; the page comes back with the outcome on top."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/batches/{batch_id}")
    driver.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{row_id}']").click()
    fill(driver, by, reason)
    driver.find_element(By.CSS_SELECTOR, "button.reject").click()


def fill(driver, by: str, reason: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "by")
    field.clear()
    field.send_keys(by)
    driver.find_element(By.ID, "reason").send_keys(reason)


def shoot_report(driver, report: Path, target: Path) -> None:
    driver.get(report.as_uri())
    shoot(driver, target, 900)


if __name__ == "__main__":
    main()

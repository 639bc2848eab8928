"""The dashboard in a real browser (Debian's chromium, headless, through Selenium) during a federation on Mosquitto.

The browser test is skipped only when chromium or chromedriver is not installed (apt: chromium chromium-driver;
.ci/run installs them). It saves the screenshot docs/operations.md shows (docs/img/dashboard.png).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge_runtime.transport.broker import MosquittoProcess
from gateway.config import GatewayConfig
from gateway.dashboard.server import start_dashboard
from gateway.observe import Observers
from gateway.service import Gateway
from gateway.store import GatewayStore

from .federation import WAIT, ManualDevice, gateway_config
from .operator import AnsweringDevice

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_token_guards_every_route_and_models_download_verified(tmp_path: Path, initial_model: Path) -> None:
    config = GatewayConfig.from_mapping({
        "gateway": {"storage": str(tmp_path / "gw"), "model": str(initial_model)},
        "dashboard": {"enabled": True, "port": 0, "token": "s3cret"},
    }, env={})  # fmt: skip
    store = GatewayStore(config.storage / "gateway.db")
    model = initial_model.read_bytes()
    version = hashlib.sha256(model).digest()
    path = config.storage / "models" / f"{version.hex()}.tflite"
    path.parent.mkdir(parents=True)
    path.write_bytes(model)
    store.add_model(version, None, None, path, path.with_suffix(".npz"), len(model))
    server, thread = start_dashboard(config, None)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        for route in ("", "app.js", "api/state", f"models/{version.hex()}.tflite"):
            assert get(server.url + route)[0] == 401, route
            assert get(server.url + route, token="wrong")[0] == 401, route
        status, body = get(server.url + "api/state", token="s3cret")
        state = json.loads(body)
        assert status == 200 and state["current_version"] == version.hex() and state["round"] == 0
        assert state["gateway"] == {"running": False, "pid": None} and state["phase"] == "idle"
        status, body = get(f"{server.url}models/{version.hex()}.tflite?token=s3cret")
        assert status == 200 and body == model
        assert get(f"{server.url}models/{'0' * 64}.tflite?token=s3cret")[0] == 404
        path.write_bytes(model + b"x")  # a damaged store is said, not served
        assert get(f"{server.url}models/{version.hex()}.tflite?token=s3cret")[0] == 500
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        store.close()


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_the_page_follows_a_federation_in_a_headless_browser(
    broker: MosquittoProcess, tmp_path: Path, initial_model: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings = gateway_config(broker, tmp_path / "gw", initial_model, rounds=8, min_devices=3, report_every=1)
    settings["dashboard"] = {"enabled": True, "port": 0}
    gateway = Gateway(GatewayConfig.from_mapping(settings, env={})).start()
    observers = Observers(gateway).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1300"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    devices: list[ManualDevice] = []
    try:
        assert observers.dashboard_url is not None
        driver.get(observers.dashboard_url)
        wait = WebDriverWait(driver, WAIT)
        wait.until(lambda d: d.find_element(By.ID, "round").text == "0")  # the page read the state: nothing yet
        assert driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr") == []
        # The devices hold round 1's tasks until the page has shown it: the counter is then seen to advance.
        devices = [AnsweringDevice(broker, f"pi-{i}", gateway.sizes, gate=True) for i in range(3)]
        devices[0].send(b"\xa3garbage")  # a refusal for the page to show
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#devices tr[data-device="pi-0"]'))
        wait.until(lambda d: d.find_element(By.ID, "round").text == "1")
        assert driver.find_element(By.ID, "phase").text == "training"
        for device in devices:
            device.open_gate()
        wait.until(lambda d: int(d.find_element(By.ID, "round").text) > 1)  # the counter advances
        assert gateway.finished.wait(WAIT), "the eight rounds did not finish"
        final = str(gateway.store.last_round())
        wait.until(lambda d: d.find_element(By.ID, "round").text == final)
        wait.until(lambda d: "MalformedCBOR" in d.find_element(By.ID, "refusals").text)
        row = driver.find_element(By.CSS_SELECTOR, '#devices tr[data-device="pi-0"]').text
        assert "online" in row and "pi-0" in row
        assert driver.find_elements(By.CSS_SELECTOR, "#quality polyline")  # the accuracy chart has a line
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bytes rect")) == 2 * 8  # up and down, per round
        links = driver.find_elements(By.CSS_SELECTOR, "#models a")
        assert len(links) == 9  # the initial model and one per round
        current = gateway.version.hex()
        href = next(a.get_attribute("href") for a in links if current in (a.get_attribute("href") or ""))
        status, body = get(str(href))
        assert status == 200 and hashlib.sha256(body).hexdigest() == current
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
        observers.stop()
        for device in devices:
            device.stop()
        gateway.stop()

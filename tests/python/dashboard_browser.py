"""Drives the azsim hub dashboard in headless Chromium (Selenium + chromedriver), one session for
every scenario: the `azsim run` device appears connected, its telemetry chart gets points, a
direct method, a desired patch and its reported acknowledgement, a C2D message with feedback,
a conflicting twin edit, bad input (a device id Azure refuses, invalid twin JSON, a method
timeout out of range), creating / disabling / deleting a device, the hub view.

Usage: dashboard_browser.py URL DEVICE_ID NONCE SCREENSHOT_DIR
With env AZSIM_DASH_TLS_URL and AZSIM_DASH_TLS_CS (a hub bound beyond loopback and its service
connection string), also: the TLS dashboard asks for credentials, refuses a wrong key, and
with the right connection string lists that hub's devices, the secret kept out of the address.
Prints one JSON line per step passed ({"step": ...}); exits non-zero on the first failure, with
the reason on stderr. Calls it makes itself (to check that nothing changed, or to change the twin
behind the page's back) go through the dashboard's own /api bridge.
"""

import json
import os
import sys
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

URL, DEVICE, NONCE, SHOTS = sys.argv[1:5]
BASE = URL.rstrip("/")
WAIT = 45


def step(name, **kw):
    print(json.dumps({"step": name, **kw}), flush=True)


def call(method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


opts = Options()
opts.binary_location = os.environ.get("AZSIM_CHROMIUM", "/usr/bin/chromium")
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
          "--window-size=1440,900", "--force-device-scale-factor=1",
          # The TLS phase's hub has its own dev CA; Chromium here has no way to trust it.
          "--ignore-certificate-errors"):
    opts.add_argument(a)
driver = webdriver.Chrome(
    service=Service(os.environ.get("AZSIM_CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
# The device table is rebuilt as events come: an element found a moment ago may be gone.
wait = WebDriverWait(driver, WAIT, ignored_exceptions=(NoSuchElementException,
                                                       StaleElementReferenceException))


def by_id(i):
    return driver.find_element(By.ID, i)


def text_of(i):
    return by_id(i).text


def until(what, pred):
    try:
        return wait.until(lambda d: pred())
    except Exception as e:  # noqa: BLE001 - report what was awaited
        raise SystemExit(f"timed out waiting for {what}: {e!r}") from None


def fill(i, value):
    el = by_id(i)
    el.clear()
    el.send_keys(value)


def shot(name):
    driver.save_screenshot(os.path.join(SHOTS, name))


def click_in_row(device, label):
    def attempt():
        row(device).find_element(By.XPATH, f".//button[text()='{label}']").click()
        return True
    until(f"{label} {device} clicked", attempt)


def row(device):
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-device="{device}"]')
    return rows[0] if rows else None


try:
    # --- devices view -------------------------------------------------------------------------
    driver.get(URL)
    until("the page to start", lambda: driver.find_element(By.TAG_NAME, "body")
          .get_attribute("data-ready") == "1")
    until(f"{DEVICE} connected", lambda: row(DEVICE) is not None and
          row(DEVICE).find_element(By.CSS_SELECTOR, "td.conn").text == "Connected")
    cells = until("the row's cells", lambda: [c.text for c in
                                              row(DEVICE).find_elements(By.TAG_NAME, "td")])
    assert cells[5] == "sas", cells
    step("device_connected", row=cells[:6])

    # Every form control has a label, and the create field takes keyboard input.
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input,textarea,select')]"
        ".filter(e => !document.querySelector(`label[for=\"${e.id}\"]`)).map(e => e.id)")
    assert unlabelled == [], unlabelled
    step("controls_labelled")

    # A device id Azure refuses: the hub's error next to the field, nothing created.
    before = call("GET", "/api/devices")[1]
    bad = "bad id/with space"
    fill("create-id", bad)
    by_id("create-button").click()
    until("the create error", lambda: text_of("create-error") != "")
    err = text_of("create-error")
    after = call("GET", "/api/devices")[1]
    assert len(after) == len(before), (before, after)
    step("bad_device_id_refused", error=err)

    # Create, disable and delete a device.
    new_id = f"dash-created-{NONCE}"
    fill("create-id", new_id)
    by_id("create-id").send_keys("\n")  # Enter submits: keyboard only
    until("the new connection string", lambda: by_id("created-cs").get_attribute("value")
          .startswith("HostName="))
    cs = by_id("created-cs").get_attribute("value")
    assert f"DeviceId={new_id};" in cs and "SharedAccessKey=" in cs, "connection string shape"
    shot("devices.png")
    until("the new row", lambda: row(new_id) is not None)
    click_in_row(new_id, "Disable")
    until("disabled", lambda: row(new_id) is not None and
          row(new_id).find_elements(By.TAG_NAME, "td")[2].text == "disabled")
    assert call("GET", f"/api/devices/{new_id}")[1]["status"] == "disabled"
    click_in_row(new_id, "Delete")
    driver.switch_to.alert.accept()
    until("the row gone", lambda: row(new_id) is None)
    assert call("GET", f"/api/devices/{new_id}")[0] == 404
    step("device_created_disabled_deleted")

    # --- one device ---------------------------------------------------------------------------
    until("the device link clicked",
          lambda: driver.find_element(By.LINK_TEXT, DEVICE).click() or True)
    until("telemetry points", lambda: int(by_id("chart").get_attribute("data-points")) >= 2)
    assert driver.find_elements(By.CSS_SELECTOR, "#chart canvas"), "a uPlot canvas"
    until("a message row", lambda: len(driver.find_elements(By.CSS_SELECTOR,
                                                             "#messages-body tr")) > 0)
    first = driver.find_element(By.CSS_SELECTOR, "#messages-body tr").text
    step("chart_has_points", points=int(by_id("chart").get_attribute("data-points")),
         last=first)

    # Direct method: ping echoes the payload.
    fill("method-name", "ping")
    fill("method-payload", json.dumps({"nonce": NONCE}))
    fill("method-timeout", "30")
    by_id("method-invoke").click()
    until("status 200", lambda: text_of("method-status") == "200")
    until("the echo", lambda: NONCE in text_of("method-response"))
    step("method_ping_200", response=json.loads(text_of("method-response")))

    # A timeout out of range: the hub's error next to the timeout field.
    fill("method-timeout", "1")
    by_id("method-invoke").click()
    until("the timeout error", lambda: text_of("method-timeout-error") != "")
    step("method_timeout_refused", error=text_of("method-timeout-error"))
    fill("method-timeout", "30")
    by_id("method-invoke").click()
    until("status 200 again", lambda: text_of("method-status") == "200"
          and text_of("method-timeout-error") == "")

    # Desired patch, acknowledged by the device in reported properties (shown live).
    fill("twin-desired", json.dumps({"telemetryInterval": 2}))
    by_id("twin-save").click()
    until("the patch result", lambda: "desired $version" in text_of("twin-result"))
    until("the reported acknowledgement", lambda: '"ac": 200' in text_of("twin-reported")
          and '"value": 2' in text_of("twin-reported"))
    step("desired_acknowledged", reported=json.loads(text_of("twin-reported")))

    # Invalid JSON in the editor: the hub's error, the twin unchanged.
    etag = call("GET", f"/api/twins/{DEVICE}")[1]["etag"]
    fill("twin-desired", '{"telemetryInterval": ')
    by_id("twin-save").click()
    until("the JSON error", lambda: text_of("twin-error") != "")
    assert call("GET", f"/api/twins/{DEVICE}")[1]["etag"] == etag
    step("invalid_twin_json_refused", error=text_of("twin-error"))

    # A conflicting edit: the twin changes behind the page's back; the page's save is refused
    # with 412, said so, and the edit stays in the editor.
    by_id("twin-reload").click()
    until("the editor reloaded", lambda: "telemetryInterval" in
          by_id("twin-desired").get_attribute("value") and text_of("twin-error") == "")
    status, _ = call("PATCH", f"/api/twins/{DEVICE}",
                     {"properties": {"desired": {"otherWriter": NONCE}}})
    assert status == 200, status
    edit = json.dumps({"telemetryInterval": 3})
    fill("twin-desired", edit)
    by_id("twin-save").click()
    until("the conflict", lambda: "conflict" in text_of("twin-error"))
    assert by_id("twin-error").get_attribute("data-status") == "412"
    assert by_id("twin-desired").get_attribute("value") == edit, "the edit is kept"
    desired = call("GET", f"/api/twins/{DEVICE}")[1]["properties"]["desired"]
    assert desired["telemetryInterval"] == 2 and desired["otherWriter"] == NONCE, desired
    step("conflict_reported", error=text_of("twin-error"))

    # C2D with a property and full feedback: queued, completed by the device, feedback shown.
    body = f"dashboard-c2d-{NONCE}"
    fill("c2d-body", body)
    fill("c2d-props", "color=blue")
    Select(by_id("c2d-ack")).select_by_value("full")
    by_id("c2d-send").click()
    until("queued", lambda: text_of("c2d-result").startswith("queued"))
    until("the completion", lambda: "completed by the device" in text_of("c2d-feedback"))
    until("the feedback", lambda: "feedback" in text_of("c2d-feedback").split("completed")[-1])
    step("c2d_sent", body=body, feedback=text_of("c2d-feedback"))
    driver.execute_script("window.scrollTo(0, 0)")
    shot("device.png")
    driver.execute_script("document.getElementById('twin-title').scrollIntoView()")
    shot("device-actions.png")

    # --- hub view -----------------------------------------------------------------------------
    by_id("nav-hub").click()
    until("the service connection string", lambda: by_id("hub-cs").get_attribute("value")
          .startswith("HostName="))
    until("a connected device counted", lambda: int(text_of("count-connected")) >= 1)
    until("messages counted", lambda: int(text_of("count-minute")) >= 1)
    kinds = {li.get_attribute("data-type")
             for li in driver.find_elements(By.CSS_SELECTOR, "#event-log li")}
    assert {"telemetry", "twinDesired", "twinReported"} <= kinds, kinds
    ca = urllib.request.urlopen(BASE + "/hub/ca.pem", timeout=30).read().decode()
    assert "BEGIN CERTIFICATE" in ca
    step("hub_view", connected=int(text_of("count-connected")),
         last_minute=int(text_of("count-minute")), events=sorted(kinds))
    shot("hub.png")

    # --- beyond loopback: TLS, and the page asks for the service's credentials ----------------
    tls_url, tls_cs = os.environ.get("AZSIM_DASH_TLS_URL"), os.environ.get("AZSIM_DASH_TLS_CS")
    if tls_url and tls_cs:
        driver.get(tls_url)
        until("the sign-in form", lambda: by_id("login").is_displayed())
        wrong = tls_cs.split("SharedAccessKey=")[0] + "SharedAccessKey=d3Jvbmcga2V5IHdyb25nIGtleQ=="
        fill("login-secret", wrong)
        by_id("login-secret").send_keys("\n")
        until("the refusal", lambda: "refused" in text_of("login-error")
              and by_id("login").is_displayed())
        fill("login-secret", tls_cs)
        by_id("login-secret").send_keys("\n")
        until("the TLS hub's device", lambda: row("dash-tls-1") is not None)
        until("the live stream", lambda: text_of("stream-state") == "live")
        assert "SharedAccessKey" not in driver.current_url, driver.current_url
        kept = driver.execute_script("return sessionStorage.getItem('azsim.dashboard.auth')")
        assert kept == tls_cs, "kept for the tab"
        step("tls_login", url=driver.current_url)
    step("done")
except SystemExit:
    raise
except Exception as e:  # noqa: BLE001
    try:
        shot("failure.png")
    except Exception:  # noqa: BLE001
        pass
    logs = []
    try:
        logs = driver.get_log("browser")
    except Exception:  # noqa: BLE001
        pass
    print(f"failed: {e!r}; browser log: {logs}", file=sys.stderr)
    sys.exit(1)
finally:
    driver.quit()

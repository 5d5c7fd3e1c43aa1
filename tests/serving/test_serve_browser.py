"""The de-raining page in a real browser: `python -m sapnet_jax.serve` with the shipped weights
as a subprocess on a free 127.0.0.1 port, driven through Debian's headless chromium with
selenium. A rainy photo and a text file named .png are uploaded together through the file
input; the photo's result read back from the page must equal what the API returns for the
same upload, the text file must show its error, and the before/after slider must move the
split. The rain scale chosen on the page is sent with the upload and shown on its card. A
server started with a token makes the page ask for it before anything is uploaded.
Screenshots are kept in $SAPNET_TEST_ARTIFACTS (else <repo>/test-artifacts/)."""

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.paths import REPO
from support.live_servers import serve_command, tiny_model
from sapnet_jax.weights import model_files

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromedriver (apt-get install chromium chromium-driver)")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
httpx = pytest.importorskip("httpx", reason="needs httpx (the test extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402 - after the skips above
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("SAPNET_TEST_ARTIFACTS") or REPO / "test-artifacts")
TOKEN = "browser-test-token-0123456789"


@pytest.fixture(scope="module")
def server():
  with serve_command(["--weights", "sapnet-rain100h"]) as (url, _, _):
    yield url


@pytest.fixture(scope="module")
def server_with_token(tmp_path_factory):
  # A tiny random network: this test is about the token, not the pictures.
  weights = tmp_path_factory.mktemp("weights") / "tiny.npz"
  model_files.save_model(tiny_model(), weights)
  with serve_command(["--weights", str(weights)], {"SAPNET_SERVE_TOKEN": TOKEN}) as (url, _, _):
    yield url


@pytest.fixture
def browser(tmp_path):
  options = webdriver.ChromeOptions()
  options.binary_location = str(CHROMIUM)
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--window-size=1000,1100",
              f"--user-data-dir={tmp_path / 'chromium'}"):
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
  driver.set_page_load_timeout(30)
  driver.set_script_timeout(30)
  try:
    yield driver
  finally:
    driver.quit()


def rainy_photo(path: Path) -> Path:
  # The example photo at 60 %: the shipped network de-rains it in about a second here.
  im = Image.open(REPO / "examples" / "rain-064.jpg").convert("RGB")
  im.resize((288, 192), Image.Resampling.LANCZOS).save(path, quality=92)
  return path


FETCH_BLOB = """
const [url, done] = arguments;
fetch(url).then((r) => r.blob()).then((blob) => {
  const reader = new FileReader();
  reader.onload = () => done(reader.result.split(",")[1]);
  reader.readAsDataURL(blob);
}).catch((e) => done("error: " + e));
"""


def test_upload_compare_and_download(server, browser, tmp_path):
  photo = rainy_photo(tmp_path / "rainy.jpg")
  bad = tmp_path / "notes.png"
  bad.write_text("a text file with an image's name")
  browser.get(server)
  WebDriverWait(browser, 10).until(
      lambda d: d.find_element(By.ID, "model").text.startswith("Model: sapnet-rain100h"))
  assert not browser.find_element(By.ID, "token-form").is_displayed()  # no token asked for
  browser.find_element(By.ID, "files").send_keys(f"{photo}\n{bad}")
  cards = WebDriverWait(browser, 60).until(lambda d: [
      c for c in d.find_elements(By.CSS_SELECTOR, "#results .card")
      if c.get_attribute("data-state") in ("done", "error")] if len(
          d.find_elements(By.CSS_SELECTOR, "#results .card[data-state=done], "
                          "#results .card[data-state=error]")) == 2 else None)
  good, failed = sorted(cards, key=lambda c: c.find_element(By.CLASS_NAME, "name").text
                        != "rainy.jpg")
  assert good.get_attribute("data-state") == "done", good.text
  assert failed.get_attribute("data-state") == "error"
  assert "notes.png: not an image" in failed.find_element(By.CLASS_NAME, "error").text

  # The result on the page is what the API gives for the same upload.
  link = good.find_element(By.CLASS_NAME, "download")
  assert link.get_attribute("download") == "rainy_derained.png"
  encoded = browser.execute_async_script(FETCH_BLOB, link.get_attribute("href"))
  assert not encoded.startswith("error"), encoded
  shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
  api = httpx.post(f"{server}/v1/derain", content=photo.read_bytes(), timeout=60)
  assert api.status_code == 200
  assert shown.shape == (192, 288, 3)
  from_api = np.asarray(Image.open(io.BytesIO(api.content)).convert("RGB"))
  np.testing.assert_array_equal(shown, from_api)
  for cls in ("before", "after"):
    assert browser.execute_script(
        "return arguments[0].naturalWidth", good.find_element(By.CLASS_NAME, cls)) == 288

  # The slider moves the split: all "after" at the left end, half and half in the middle.
  slider = good.find_element(By.CLASS_NAME, "slider")
  assert slider.accessible_name == "Before/after split for rainy.jpg"
  before = good.find_element(By.CLASS_NAME, "before")
  slider.send_keys(Keys.HOME)
  assert before.value_of_css_property("clip-path") == "inset(0px 100% 0px 0px)"
  slider.send_keys(Keys.END)
  assert before.value_of_css_property("clip-path") == "inset(0px 0% 0px 0px)"
  browser.execute_script("arguments[0].value = 50; arguments[0].dispatchEvent(new Event('input'))",
                         slider)
  assert before.value_of_css_property("clip-path") == "inset(0px 50% 0px 0px)"

  # Nothing failed to load and the page's policy refused nothing (the bad upload's 400 aside).
  problems = [e["message"] for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and "/v1/derain" not in e["message"]]
  assert not problems, problems
  ARTIFACTS.mkdir(parents=True, exist_ok=True)
  browser.execute_script("window.scrollTo(0, 0)")
  assert browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))


def test_page_asks_for_the_token_then_derains(server_with_token, browser, tmp_path):
  photo = tmp_path / "small.jpg"
  Image.open(REPO / "examples" / "rain-064.jpg").convert("RGB").resize((96, 64)).save(photo)
  browser.get(server_with_token)
  form = browser.find_element(By.ID, "token-form")
  WebDriverWait(browser, 10).until(lambda d: form.is_displayed())
  assert not browser.find_element(By.ID, "drop").is_displayed()  # nothing to upload yet
  assert "requires an access token" in browser.find_element(By.ID, "model").text
  ARTIFACTS.mkdir(parents=True, exist_ok=True)
  assert browser.save_screenshot(str(ARTIFACTS / "serve_page_token.png"))

  field = browser.find_element(By.ID, "token")
  field.send_keys("not-the-token-at-all")
  field.send_keys(Keys.ENTER)
  error = browser.find_element(By.ID, "token-error")
  WebDriverWait(browser, 10).until(lambda d: error.is_displayed())
  assert error.text == "That token was not accepted."
  field.send_keys(TOKEN)
  browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
  WebDriverWait(browser, 10).until(
      lambda d: d.find_element(By.ID, "model").text.startswith("Model: tiny.npz"))
  assert not form.is_displayed() and browser.find_element(By.ID, "drop").is_displayed()

  browser.find_element(By.ID, "files").send_keys(str(photo))
  card = WebDriverWait(browser, 60).until(lambda d: [
      c for c in d.find_elements(By.CSS_SELECTOR, "#results .card")
      if c.get_attribute("data-state") in ("done", "error")])[0]
  assert card.get_attribute("data-state") == "done", card.text
  assert browser.execute_script(
      "return arguments[0].naturalWidth", card.find_element(By.CLASS_NAME, "after")) == 96
  # Kept for this tab: a reload does not ask again; the token is in no URL and no cookie.
  browser.refresh()
  WebDriverWait(browser, 10).until(
      lambda d: d.find_element(By.ID, "model").text.startswith("Model: tiny.npz"))
  assert not browser.find_element(By.ID, "token-form").is_displayed()
  assert TOKEN not in browser.current_url and not browser.get_cookies()


def test_rain_scale_control_sends_the_chosen_scale(server, browser, tmp_path):
  photo = rainy_photo(tmp_path / "phone.jpg")
  browser.get(server)
  WebDriverWait(browser, 10).until(
      lambda d: d.find_element(By.ID, "model").text.startswith("Model: sapnet-rain100h"))
  control = browser.find_element(By.ID, "scale")
  assert control.is_displayed() and control.accessible_name == "Rain scale"
  choices = Select(control)
  assert [o.get_attribute("value") for o in choices.options] == ["1", "auto", "1.5", "2", "3",
                                                                 "4"]
  limits = httpx.get(f"{server}/v1/models", timeout=10).json()["limits"]
  default = limits["scale"]  # the server's --scale
  assert control.get_attribute("value") == (default if default == "auto" else f"{default:g}")
  assert "auto picks a scale" in browser.find_element(By.ID, "scale-hint").text.lower()
  # By keyboard, as a user without a mouse would: focus the control, pick "2".
  control.send_keys("2")
  assert control.get_attribute("value") == "2"

  browser.find_element(By.ID, "files").send_keys(str(photo))
  card = WebDriverWait(browser, 60).until(lambda d: [
      c for c in d.find_elements(By.CSS_SELECTOR, "#results .card")
      if c.get_attribute("data-state") in ("done", "error")])[0]
  assert card.get_attribute("data-state") == "done", card.text
  info = card.find_element(By.CLASS_NAME, "info").text
  assert "scale 2" in info.split(" · ") and "(auto)" not in info, info

  # The download is the server's answer at scale 2, not at full size.
  link = card.find_element(By.CLASS_NAME, "download")
  encoded = browser.execute_async_script(FETCH_BLOB, link.get_attribute("href"))
  assert not encoded.startswith("error"), encoded
  shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
  assert shown.shape == (192, 288, 3)
  at_2 = httpx.post(f"{server}/v1/derain?scale=2", content=photo.read_bytes(), timeout=60)
  assert at_2.status_code == 200 and at_2.headers["X-Scale"] == "2"
  np.testing.assert_array_equal(
      shown, np.asarray(Image.open(io.BytesIO(at_2.content)).convert("RGB")))
  at_1 = httpx.post(f"{server}/v1/derain?scale=1", content=photo.read_bytes(), timeout=60)
  assert at_1.status_code == 200
  assert not np.array_equal(shown, np.asarray(Image.open(io.BytesIO(at_1.content)).convert("RGB")))

  # Auto: the card says what auto chose.
  choices.select_by_value("auto")
  browser.find_element(By.ID, "files").send_keys(str(photo))
  cards = WebDriverWait(browser, 60).until(lambda d: d.find_elements(
      By.CSS_SELECTOR, "#results .card[data-state=done], #results .card[data-state=error]")
      if len(d.find_elements(By.CSS_SELECTOR, "#results .card[data-state=done], "
                             "#results .card[data-state=error]")) == 2 else None)
  auto_info = cards[1].find_element(By.CLASS_NAME, "info").text
  assert cards[1].get_attribute("data-state") == "done", cards[1].text
  assert any(f"scale {s:g} (auto)" in auto_info for s in (1, 1.5, 2, 3, 4)), auto_info

  problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
  assert not problems, problems  # the policy refused nothing, nothing failed to load
  ARTIFACTS.mkdir(parents=True, exist_ok=True)
  browser.execute_script("window.scrollTo(0, 0)")
  assert browser.save_screenshot(str(ARTIFACTS / "serve_page_scale.png"))

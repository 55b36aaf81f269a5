"The upload page of `deepfake-mlops serve` (`GET /`) in headless Chromium, against the real server and model."
from __future__ import annotations
import json, urllib.error, urllib.request
from pathlib import Path

import pytest

from helpers import describe, run_cli


@pytest.fixture(scope="module")
def sample_video(ffpp) -> Path:
    "One real video of the FaceForensics++ sample (the `ffpp` fixture skips when ../shared/datasets is absent)."
    video = ffpp/"original_sequences/youtube/c23/videos/183.mp4"
    if not video.is_file(): pytest.skip(f"{video} not present in the FaceForensics++ sample")
    return video


def _pick(browser, url, path, timeout=300, explain=True) -> str:
    "Open the page, pick `path` in its file input (heat maps asked for or not), and wait for the verdict or the error; returns which one shows."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(url + "/")
    if browser.find_element(By.ID, "explain").is_selected() != explain: browser.find_element(By.ID, "explain").click()
    browser.find_element(By.ID, "file").send_keys(str(Path(path).resolve()))
    shown = lambda b: next((i for i in ("verdict", "error") if b.find_element(By.ID, i).is_displayed()), False)
    return WebDriverWait(browser, timeout).until(shown)


def _text(browser, element_id) -> str:
    from selenium.webdriver.common.by import By
    return browser.find_element(By.ID, element_id).text


def _post(url, body, kind):
    req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=300) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read())


def _check_shown(browser, expected):
    "The page shows `expected` (a verdict as JSON): the numbers, and one mark per scored frame on the right side of the threshold."
    from selenium.webdriver.common.by import By
    assert _text(browser, "label") == expected["label"]
    assert _text(browser, "probability") == f"{expected['probability']:.4f}"
    assert _text(browser, "threshold") == f"{expected['threshold']:.4f}"
    assert int(_text(browser, "faces")) == expected["faces_found"]
    assert int(_text(browser, "frames")) == expected["frames_examined"]
    assert _text(browser, "version") == expected["model_version"]
    marks = browser.find_elements(By.CSS_SELECTOR, "#plot circle.mark")
    assert len(marks) == len(expected["frames"]) == expected["faces_found"]
    assert [int(m.get_attribute("data-index")) for m in marks] == [f["index"] for f in expected["frames"]]
    assert [float(m.get_attribute("data-probability")) for m in marks] == [f["probability"] for f in expected["frames"]]
    line = float(browser.find_element(By.CSS_SELECTOR, "#plot line.threshold").get_attribute("y1"))
    for m, f in zip(marks, expected["frames"]):  # SVG y grows downwards: above the line means a smaller y
        assert (float(m.get_attribute("cy")) <= line) == (f["probability"] >= expected["threshold"]), f


def test_page_shows_the_verdict_predict_gives(demo_server, browser, sample_video):
    url, tar = demo_server
    video = sample_video
    proc = run_cli("predict", tar, video, "--json")
    assert proc.returncode == 0, describe(proc)
    expected = json.loads(proc.stdout)[0]
    assert _pick(browser, url, video) == "verdict", _text(browser, "error")
    _check_shown(browser, expected)
    assert expected["model_version"] == "test-1" and expected["faces_found"] > 1


def _shown_maps(browser) -> list[tuple[int, bool]]:
    "The heat maps on the page: (frame index of the caption, whether the browser decoded the image) each."
    from selenium.webdriver.common.by import By
    if not browser.find_element(By.ID, "maps").is_displayed(): return []
    shown = []
    for figure in browser.find_elements(By.CSS_SELECTOR, "#face-maps figure"):
        img = figure.find_element(By.TAG_NAME, "img")
        decoded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        shown.append((int(figure.find_element(By.TAG_NAME, "figcaption").text.split()[1]), decoded == 224))
    return shown


def test_page_shows_heat_maps_of_the_most_suspicious_faces(demo_server, browser, sample_video):
    url, _ = demo_server
    status, expected = _post(url, sample_video.read_bytes(), "video/mp4")
    assert status == 200, expected
    assert _pick(browser, url, sample_video) == "verdict", _text(browser, "error")
    # the four faces of the highest fake probability, most suspicious first, each a face-sized image the page allowed
    ranked = sorted(expected["frames"], key=lambda f: -f["probability"])[:4]
    assert _shown_maps(browser) == [(f["index"], True) for f in ranked]
    assert _pick(browser, url, sample_video, explain=False) == "verdict"
    assert _shown_maps(browser) == []  # not asked for, not shown


def test_page_shows_the_verdict_for_a_photo(demo_server, browser, sample_video, tmp_path):
    import cv2
    from deepfake_mlops.video import sample_frames
    url, _ = demo_server
    frame = sample_frames(sample_video, 1)[0].image
    photo = tmp_path/"face.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    status, expected = _post(url, photo.read_bytes(), "image/jpeg")  # the handler's answer for the same bytes
    assert status == 200, expected
    assert _pick(browser, url, photo) == "verdict", _text(browser, "error")
    _check_shown(browser, expected)
    assert expected["frames_examined"] == 1


@pytest.mark.parametrize("name, kind, status", [("notes.txt", "text/plain", 415), ("notes.mp4", "video/mp4", 422)])
def test_page_shows_the_error_of_a_refused_upload(demo_server, browser, tmp_path, name, kind, status):
    url, _ = demo_server
    path = tmp_path/name
    path.write_text("not a video")
    got, answer = _post(url, path.read_bytes(), kind)
    assert got == status, answer
    assert _pick(browser, url, path, timeout=60) == "error"
    shown = _text(browser, "error")
    assert shown.startswith(f"{name}: HTTP {status}: "), shown
    # the server's message, word for word; it names no file of the server's
    assert answer["error"] in shown and ".video" not in shown, (shown, answer)
    assert not browser.find_element("id", "verdict").is_displayed()


def test_page_refuses_a_file_over_the_server_limit_before_sending_it(demo_model, start_server, browser, sample_video):
    work, tar = demo_model
    video = sample_video
    url = start_server(tar, env={"DEEPFAKE_MLOPS_MAX_BODY": str(video.stat().st_size - 1)})
    assert _pick(browser, url, video, timeout=60) == "error"
    assert "over this server's limit" in _text(browser, "error")
    status, answer = _post(url, video.read_bytes(), "video/mp4")  # and the server refuses it too
    assert status == 413 and "limit" in answer["error"], answer

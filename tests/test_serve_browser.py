"""``gradeclip serve`` driven in a real headless Chromium (Debian's ``chromium`` through Playwright): upload an image,
type two prompts, run, and check the overlays and the shaded words in the page; no image, a decompression bomb and
an unknown word are messages in the page, and the page keeps working.

Set ``GRADECLIP_SCREENSHOT=docs/images/serve.png`` to refresh the screenshot of docs/demo.md.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser test is skipped",
                allow_module_level=True)
pytestmark = pytest.mark.subprocess  # a browser (and the app on a local port)
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from fixtures import bomb_png  # noqa: E402
from serve_server import start  # noqa: E402

from captum_gradeclip.app import ServeLimits  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app, service = start(ServeLimits(), tmp_path_factory.mktemp("browser"))
    yield app, service
    app.close()
    service.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser, server):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(60_000)  # the CI machine may be busy
    page.goto(server[0].local_url)
    page.locator("#run").wait_for()
    yield page
    page.close()


def test_upload_two_prompts_overlays_and_shaded_words(page, server, tmp_path):
    scene = server[1].draw_scene(seed=7)
    page.locator("#image input[type=file]").set_input_files(str(scene))
    page.locator("#preview img").wait_for()
    page.locator("#prompts textarea").fill("a red circle\na blue circle")
    page.locator("#run").click()
    page.locator("#words .gradeclip-token").nth(5).wait_for()
    sync_api.expect(page.locator("#overlays img")).to_have_count(2)
    captions = page.locator("#overlays").inner_text()
    assert re.search(r"a red circle \(cosine -?0\.\d{3}\)", captions)
    assert re.search(r"a blue circle \(cosine -?0\.\d{3}\)", captions)
    words = page.locator("#words .gradeclip-token")
    assert [words.nth(i).inner_text() for i in range(6)] == ["a", "red", "circle", "a", "blue", "circle"]
    shades = [float(re.search(r"rgba\(255, 140, 0, ([\d.]+)\)", words.nth(i).get_attribute("style")).group(1))
              for i in range(6)]
    assert max(shades[:3]) == 1.0 and max(shades[3:]) == 1.0 and min(shades) < 1.0  # each prompt shaded apart (both maps non-empty on this scene)
    expected = server[1].explain(scene, "a red circle\na blue circle")
    assert page.locator("#words .gradeclip-title").all_inner_texts() == expected.captions
    assert "Explained 2 prompt(s)" in page.locator("#status").inner_text()
    assert page.locator("#maps a").first.get_attribute("href").endswith("/gradeclip_maps.npz")
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("GRADECLIP_SCREENSHOT"):
        shutil.copyfile(shot, Path(os.environ["GRADECLIP_SCREENSHOT"]))


def test_bad_input_is_a_message_in_the_page_and_the_page_keeps_working(page, tmp_path):
    def message(pattern):
        sync_api.expect(page.get_by_text(re.compile(pattern)).first).to_be_visible()

    page.locator("#run").click()  # no image yet
    message(r"no image: upload an image")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    page.locator("#image input[type=file]").set_input_files(str(bomb))
    message(r"bomb\.png: too many pixels")
    page.locator("#draw").click()  # a new scene replaces the refused upload
    sync_api.expect(page.locator("#image")).to_contain_text("scene_")
    page.locator("#prompts textarea").fill("a purple circle")
    page.locator("#run").click()
    message(r"unknown word\(s\) \['purple'\]")
    assert "Traceback" not in page.content()
    page.locator("#prompts textarea").fill("a red circle")
    page.locator("#run").click()
    sync_api.expect(page.locator("#overlays img")).to_have_count(1)

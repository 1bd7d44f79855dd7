"""The browser app (hrstyle/app.py, scripts/app.py): same results and messages as scripts/infer.py, uploads only
in its own temporary folder; and (``-m browser``) the real page in a headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, SHARED_CONTENT, random_photo, run_script
from PIL import Image

from hrstyle.app import Controls, StylizerCache, Workspace, find_styles, stylize_photos, thumbnail
from hrstyle.inference import Runtime

WINTER = ROOT / "checkpoints" / "winter.pt"


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture
def workspace():
    space = Workspace()
    yield space
    space.cleanup()


@pytest.fixture(scope="module")
def styles():
    return {s.name: s for s in find_styles()}


def test_the_gallery_has_the_shipped_styles_and_thumbnails_without_their_images(styles, tmp_path):
    assert {"winter", "porcelain", "faded", "overcast", "vivid", "starry"} <= set(styles)
    assert list(styles)[-1] == "starry"  # photo styles first
    assert styles["winter"].photo_style and styles["winter"].color_match == 1.0 and styles["winter"].has_color
    assert not styles["starry"].photo_style
    missing = type(styles["winter"])(**{**styles["winter"].__dict__, "style_image": None})
    tile = thumbnail(missing, 64)  # the style image is not here: a tile in the style's mean colour
    assert tile.size == (64, 64) and tile.getpixel((0, 0)) == missing.mean_color
    shutil.copy(WINTER, tmp_path / "mine.pt")  # checkpoints=<dir>: one more, told apart from the shipped one
    names = [s.name for s in find_styles(tmp_path)]
    assert len(names) == len(styles) + 1 and any(n.startswith("winter (") for n in names)


def test_app_result_equals_the_cli(styles, workspace, tmp_path):
    photo = random_photo(tmp_path / "in" / "photo.png", (120, 90), seed=3)
    controls = Controls(strength=0.6, color_match=0.5, photorealism=True, preserve_color=False, work_size=64)
    look = controls.look(styles["winter"])
    assert (look.guided_radius, look.color_match, look.strength, look.work_size) == (8, 0.5, 0.6, 64)
    assert look.color_bands == styles["winter"].color_bands == 8  # the style's graduated match
    assert Controls(graduated=False).look(styles["winter"]).color_bands == 1
    assert Controls(graduated=True).look(styles["starry"]).color_bands == 8
    stylizers = StylizerCache(Runtime(backend="eager"))
    outcome = stylize_photos([photo], styles["winter"], controls, workspace, stylizers)
    assert not outcome.messages and outcome.download == outcome.results[0][1]
    assert outcome.download.name == "photo_winter.png" and workspace.contains(outcome.download)
    cli = run_script("infer.py", str(photo), f"output={tmp_path / 'cli.png'}", "backend=eager",
                     *controls.overrides(styles["winter"]))
    assert cli.returncode == 0, cli.stderr
    app, ref = pixels(outcome.download), pixels(tmp_path / "cli.png")
    assert app.shape == ref.shape == (90, 120, 3)
    assert np.abs(app - ref).max() <= 1
    # The same settings again: the cached Stylizer.
    assert stylizers.get(styles["winter"].checkpoint, look) is stylizers.get(styles["winter"].checkpoint, look)


def test_a_bad_file_gives_the_cli_line_and_the_app_goes_on(styles, workspace, tmp_path):
    uploads = tmp_path / "uploads"
    good = random_photo(uploads / "good.png", (40, 32))
    bad = uploads / "bad.jpg"
    bad.write_text("not a photo")
    before = sorted(uploads.iterdir())
    stylizers = StylizerCache(Runtime(backend="eager"))
    controls = Controls(work_size=32)
    outcome = stylize_photos([good, bad], styles["starry"], controls, workspace, stylizers)
    shutil.copytree(uploads, tmp_path / "cli")  # the same names, run where the CLI may write
    cli = run_script("infer.py", "good.png", "bad.jpg", "output=out", "backend=eager",
                     *controls.overrides(styles["starry"]), cwd=tmp_path / "cli")
    assert cli.returncode == 1
    line = next(line for line in cli.stdout.splitlines() if "skipped:" in line)
    assert outcome.messages == [line] and line.startswith("[2/2] skipped: cannot read image bad.jpg")
    assert [p.name for _, p in outcome.results] == ["good_starry.png"]
    # Nothing is written beside the uploads; several photos: the results and a zip, all in the workspace.
    again = stylize_photos([good, good], styles["starry"], controls, workspace, stylizers)
    assert sorted(uploads.iterdir()) == before
    assert [p.name for _, p in again.results] == ["good_starry.png", "good_starry-2.png"]
    assert zipfile.ZipFile(again.download).namelist() == ["good_starry.png", "good_starry-2.png"]
    assert all(workspace.contains(p) for _, p in again.results + outcome.results)
    workspace.cleanup()
    assert not workspace.root.exists()


def test_the_page_builds(styles, workspace):
    pytest.importorskip("gradio")
    from hrstyle.app import build_app

    demo = build_app(list(styles.values()), workspace, StylizerCache())
    assert demo.title.startswith("hrstyle")


# ---------------------------------------------------------------- the real page, in a headless Chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chrome(downloads: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1250", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)


@pytest.mark.browser
def test_in_a_real_browser(tmp_path):
    """Upload a real photo, pick a style, move the strength slider, download the result: it has the photo's size
    and the CLI's pixels. A screenshot goes to tmp_path (and to $HRSTYLE_APP_SCREENSHOT when set)."""
    pytest.importorskip("gradio")
    photo = SHARED_CONTENT / "capvst_05.jpg"
    if not photo.is_file():
        pytest.skip(f"the real photo {photo} is not here (the shared/ development data)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    port = _free_port()
    log = open(tmp_path / "app.log", "w+")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    app = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "app.py"), "host=127.0.0.1", f"port={port}"],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert app.poll() is None and time.time() < deadline, (log.seek(0), log.read())[1]
                time.sleep(1)
        workspace = Path(next(line for line in Path(log.name).read_text().splitlines()
                              if "Temporary folder:" in line).split("Temporary folder: ")[1])
        driver = _chrome(downloads)
        wait = WebDriverWait(driver, 300)
        driver.get(url)
        # Pick the style "winter" in the gallery.
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#styles button img")))
        for item in driver.find_elements(By.CSS_SELECTOR, "#styles button"):
            if "winter" in item.text or item.find_elements(By.CSS_SELECTOR, "img[alt='winter']"):
                item.click()
                break
        else:
            raise AssertionError("no 'winter' in the gallery")
        wait.until(ec.text_to_be_present_in_element((By.ID, "style-name"), "winter"))
        # Drop the photo.
        driver.find_element(By.CSS_SELECTOR, "#photos input[type=file]").send_keys(str(photo))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Done"))
        # Move the strength slider to 0.6 (8 steps of 0.05) with the keyboard, release it.
        slider = driver.find_element(By.CSS_SELECTOR, "#strength input[type=range]")
        slider.click()  # the middle of the track: 0.5
        for _ in range(2):
            slider.send_keys(Keys.ARROW_RIGHT)
        driver.execute_script("arguments[0].dispatchEvent(new PointerEvent('pointerup', {bubbles: true}));"
                              "arguments[0].dispatchEvent(new MouseEvent('mouseup', {bubbles: true}));", slider)
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "strength 0.6,"))
        assert "winter" in driver.find_element(By.ID, "status").text
        # Download the result.
        link = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#download a")))
        name = link.get_attribute("download") or "capvst_05_winter.jpg"
        link.click()
        result = downloads / name
        end = time.time() + 60
        while not result.is_file() or list(downloads.glob("*.crdownload")):
            assert time.time() < end, list(downloads.iterdir())
            time.sleep(0.5)
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("HRSTYLE_APP_SCREENSHOT"):
            shutil.copy(shot, os.environ["HRSTYLE_APP_SCREENSHOT"])
        # The photo's size and the CLI's pixels with the same settings.
        cli = run_script("infer.py", str(photo), f"output={tmp_path / 'cli.jpg'}", "checkpoint=checkpoints/winter.pt",
                         "strength=0.6")
        assert cli.returncode == 0, cli.stderr
        with Image.open(photo) as original, Image.open(result) as downloaded:
            assert downloaded.size == original.size
        assert np.abs(pixels(result) - pixels(tmp_path / "cli.jpg")).max() <= 1
        # The upload went into the app's temporary folder, and only there.
        assert list(workspace.rglob(photo.name)), "the upload is not in the app's temporary folder"
    finally:
        if driver is not None:
            driver.quit()
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
        log.close()
    assert not workspace.exists(), "the app's temporary folder was not removed"

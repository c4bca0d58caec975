"""The service's page in a real browser: Debian's chromium, headless, driven by selenium,
against the service listening on 127.0.0.1 (a free port)."""

import contextlib
import shutil
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'lit[serve]') is not installed")
pytest.importorskip("selenium", reason="selenium (the test extra) is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Debian's chromium and chromium-driver are not installed and could not be (.ci/run installs them with "
           "apt-get where it runs as root)")


@contextlib.contextmanager
def serving(service):
    """The app over ``service`` served by uvicorn on 127.0.0.1, a free port, in a thread;
    always shut down. Gives its address."""
    import uvicorn

    from lit.serve import create_app, listen

    sock = listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def server(service):
    with serving(service) as url:
        yield url


@pytest.fixture
def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_page_searches_by_photo_shows_matches_and_adds_a_photo(server, browser, index_copy, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = index_copy[0]
    wait = WebDriverWait(browser, 120)
    browser.get(server + "/")
    wait.until(lambda d: d.find_element(By.ID, "stats").text.startswith("8 photos indexed"))

    browser.find_element(By.ID, "file-input").send_keys(str(root / "street" / "DSC_0410.JPG"))
    # the grid shows what the API returns: the photos with a positive score, best first
    wait.until(lambda d: d.find_element(By.ID, "query-name").text == "DSC_0410.JPG"
               and len(d.find_elements(By.CSS_SELECTOR, ".card")) >= 2)
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards]
    assert "street/DSC_0410.JPG" in names and "street/DSC_0411.JPG" in names
    assert browser.find_element(By.ID, "query-name").text == "DSC_0410.JPG"
    # every thumbnail loaded
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                             for i in d.find_elements(By.CSS_SELECTOR, ".card img")))
    browser.save_screenshot(str(tmp_path / "results.png"))

    cards[names.index("street/DSC_0411.JPG")].click()
    wait.until(lambda d: "matching super-feature" in d.find_element(By.ID, "viewer-meta").text)
    assert browser.find_element(By.ID, "viewer").is_displayed()
    canvas = browser.find_element(By.ID, "canvas")
    assert canvas.size["width"] > 300 and canvas.size["height"] > 100
    # click the first match's end point on the left photo: its attention maps are drawn
    x, y = browser.execute_script("const p = state.viewer.points[0]; return [p[0], p[1]];")
    browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "arguments[0].dispatchEvent(new MouseEvent('click', {clientX: r.left + arguments[1], clientY: r.top + arguments[2]}));",
        canvas, x, y)
    wait.until(lambda d: "attention maps" in d.find_element(By.ID, "viewer-meta").text)
    browser.save_screenshot(str(tmp_path / "match.png"))
    browser.find_element(By.ID, "close").click()
    assert not browser.find_element(By.ID, "viewer").is_displayed()

    # add a photo through the page; the count follows
    browser.find_element(By.ID, "add-zone-input").send_keys(str(root / "terrace" / "terrace1.jpg"))
    wait.until(lambda d: "added terrace1.jpg" in d.find_element(By.ID, "adds").text)
    wait.until(lambda d: d.find_element(By.ID, "stats").text.startswith("9 photos indexed"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_photos_whose_names_are_not_utf_8_show_their_escaped_names_and_thumbnails(odd_index, serve_model, browser,
                                                                                   tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lit.serve import open_service

    query = tmp_path / "query.jpg"  # the photo indexed as caf\xe9.jpg, under a plain name
    query.write_bytes(next(p for p in odd_index[0].iterdir() if p.name.startswith("caf")).read_bytes())
    svc = open_service(odd_index[1], model=serve_model, device="cpu", warm_up=False)
    try:
        with serving(svc) as url:
            wait = WebDriverWait(browser, 120)
            browser.get(url + "/")
            wait.until(lambda d: d.find_element(By.ID, "stats").text.startswith("3 photos indexed"))
            browser.find_element(By.ID, "file-input").send_keys(str(query))
            wait.until(lambda d: d.find_element(By.ID, "query-name").text == "query.jpg"
                       and len(d.find_elements(By.CSS_SELECTOR, ".card")) >= 2)
            cards = browser.find_elements(By.CSS_SELECTOR, ".card")
            names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards]
            assert names[0] == "caf\\xe9.jpg" and "new\\nline.jpg" in names
            wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                     for i in d.find_elements(By.CSS_SELECTOR, ".card img")))
            cards[0].click()  # its matches with the query: fetched by the shown name
            wait.until(lambda d: "matching super-feature" in d.find_element(By.ID, "viewer-meta").text)
            browser.save_screenshot(str(tmp_path / "odd.png"))
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
    finally:
        svc.close()

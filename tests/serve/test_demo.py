"""The demo page at `/` and the `/search` it uses; the page itself driven in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest


def test_search_finds_titles_and_ids_most_popular_first(recommender):
    rec = recommender("tema")
    found = rec.search("F0000", limit=5)
    assert 1 <= len(found) <= 5 and all("f0000" in f"{f['item']} {f['title']}".lower() for f in found)
    counts = [f["train_interactions"] for f in found]
    assert counts == sorted(counts, reverse=True)
    kitchen = rec.search("", domain="Kitchen", limit=7)
    assert len(kitchen) == 7 and {f["domain"] for f in kitchen} == {"Kitchen"}
    assert [f["item"] for f in kitchen] == [i["item"] for i in rec.recommend([], "Kitchen", k=7)]  # popularity
    assert rec.search("no such title anywhere") == []


def test_search_and_page_over_http(client):
    c = client("tema")
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="q"' in page.text and 'id="recs"' in page.text and "http" not in page.text.split("<script>")[0].lower()
    r = c.get("/search", params={"q": "CAST IRON teapot with tea", "domain": "Kitchen", "limit": 3})
    assert r.status_code == 200 and [i["item"] for i in r.json()["items"]] == ["KCOLD-tea"]
    assert c.get("/search", params={"limit": 0}).status_code == 422
    assert c.get("/search", params={"domain": "Garden"}).status_code == 422


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def live_tema(recommender):
    """The TEMA app under a real uvicorn on a loopback port, in a thread of this process."""
    uvicorn = pytest.importorskip("uvicorn")
    from temarec.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(recommender("tema")), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_demo_page_builds_a_history_and_shows_explained_recommendations(live_tema, recommender, tmp_path):
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(live_tema)
            page.wait_for_function("document.querySelector('#domain').options.length === 2")
            assert "tema on" in page.inner_text("#meta")
            # a two-domain history: one Food item and one Kitchen item found by search
            for query in ("F00001", "K01002"):
                page.fill("#q", query)
                page.wait_for_selector(f"li.result[data-item='{query}']")
                page.click(f"li.result[data-item='{query}']")
            assert page.eval_on_selector_all("li.history-item", "els => els.map(e => e.dataset.item)") == \
                ["F00001", "K01002"]
            page.select_option("#domain", "Kitchen")
            page.fill("#k", "4")
            page.click("#go")
            page.wait_for_selector("li.rec")
            shown = page.eval_on_selector_all("li.rec", "els => els.map(e => e.dataset.item)")
            expected = recommender("tema").recommend(["F00001", "K01002"], "Kitchen", k=4)
            assert shown == expected.item_ids
            first = expected[0]["explanation"]
            tags = page.eval_on_selector_all("li.rec:first-child span.tag", "els => els.map(e => e.textContent)")
            assert tags == [t["tag"] for t in first["tags"]]
            widths = page.eval_on_selector_all("li.rec:first-child .bar i",
                                               "els => els.map(e => [e.dataset.modality, parseFloat(e.style.width)])")
            for modality, width in widths:
                assert width == pytest.approx(100 * first["modality_share"][modality], abs=0.06)
            # TEMAREC_DEMO_SCREENSHOT=docs/demo.png refreshes the README's picture
            shot = Path(os.environ.get("TEMAREC_DEMO_SCREENSHOT", tmp_path / "demo.png"))
            page.set_viewport_size({"width": 1280, "height": 720})
            page.screenshot(path=str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            browser.close()

"""The web app of `matchkit serve` in a real browser (headless Chromium).

Upload by drop, search by a dragged crop box, check, label, the dedupe
review (another keeper, an unticked member, apply, undo) and the API docs
(Swagger UI served by the package, no CDN), with screenshots
saved by the test (in its tmp folder, and in $MATCHKIT_SCREENSHOTS if set).
Needs ``chromium`` and ``chromium-driver`` (apt), like tests/test_browser.py.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("transformers")
import _chromium  # noqa: E402
from conftest import make_photo  # noqa: E402
from matchkit.embed import load_embedder  # noqa: E402
from matchkit.store.gallery import Gallery  # noqa: E402
from test_serve import _free_port, _start_server, jpeg  # noqa: E402

pytestmark = pytest.mark.skipif(not _chromium.available(),
                                reason="needs chromium and chromium-driver (apt)")

DROP = """
const [selector, b64, name] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
document.querySelector(selector).dispatchEvent(
    new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
"""
DRAG = """
const [x0, y0, x1, y1] = arguments, c = document.getElementById("search-canvas");
const b = c.getBoundingClientRect();
const at = (x, y) => ({clientX: b.left + x * b.width / c.width,
                       clientY: b.top + y * b.height / c.height, bubbles: true});
c.dispatchEvent(new MouseEvent("mousedown", at(x0, y0)));
c.dispatchEvent(new MouseEvent("mousemove", at((x0 + x1) / 2, (y0 + y1) / 2)));
c.dispatchEvent(new MouseEvent("mousemove", at(x1, y1)));
window.dispatchEvent(new MouseEvent("mouseup", at(x1, y1)));
return document.getElementById("crop-text").textContent;
"""


def _attr(name: str) -> str:
    return f'return document.documentElement.getAttribute("{name}")'


def _shot(browser, tmp_path: Path, name: str) -> Path:
    path = browser.screenshot(tmp_path / name)
    assert path.stat().st_size > 5000
    if os.environ.get("MATCHKIT_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["MATCHKIT_SCREENSHOTS"]) / name)
    return path


def test_web_app_upload_crop_search_check_label_review_apply_undo(tmp_path, tiny_clip_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for s in range(20, 26):
        (photos / f"p{s}.jpg").write_bytes(jpeg(s, (240, 180)))
    make_photo(20, (240, 180)).resize((120, 90)).save(photos / "p20_small.jpg", quality=80)
    make_photo(20, (240, 180)).save(photos / "p20_copy.png")
    gdir = tmp_path / "g"
    with Gallery(gdir) as g:
        g.add(sorted(photos.iterdir()))
        g.set_labels({i: ["twenty" if "p20" in g.get(i).path else "other"] for i in g.ids()})
        g.embed(load_embedder(str(tiny_clip_dir)))
        g.save()
    port = _free_port()
    server = _start_server(gdir, port)
    try:
        with _chromium.Chromium(1280, 1400) as b:
            b.get(f"http://127.0.0.1:{port}/")
            b.wait(_attr("data-mk-ready"))
            assert b.run('return document.getElementById("gallery").value') == "g"

            # browse: add an image by dropping it, with labels
            b.run('document.querySelector("[data-tab=browse]").click();'
                  'document.getElementById("add-labels").value = "new, dropped";')
            b.run(DROP, "[data-for=add]", base64.b64encode(jpeg(90)).decode(), "new.jpg")
            added = int(b.wait(_attr("data-mk-added")))
            b.wait('return document.querySelectorAll("#browse-results .card").length === 9')
            with Gallery(gdir, create=False) as g:
                assert g.get(added).labels == ["new", "dropped"]
            _shot(b, tmp_path, "serve-browse.png")

            # search by a crop box dragged on the dropped query
            b.run('document.querySelector("[data-tab=search]").click()')
            b.run(DROP, "[data-for=search]", base64.b64encode(jpeg(21, (240, 180))).decode(),
                  "q.jpg")
            b.wait(_attr("data-mk-query"))
            assert b.run(DRAG, 30, 20, 200, 150) == "crop 30,20,170,130"
            b.run('document.getElementById("search-k").value = 4;'
                  'document.getElementById("search-go").click()')
            assert b.wait(_attr("data-mk-searched")) == "4"
            _shot(b, tmp_path, "serve-search.png")

            # check and label an exact copy of p20
            b.run('document.querySelector("[data-tab=check]").click()')
            b.run(DROP, "[data-for=check]", base64.b64encode((photos / "p20.jpg").read_bytes()
                                                             ).decode(), "p20.jpg")
            b.wait(_attr("data-mk-checked"))
            assert "a copy" in b.run('return document.getElementById("check-results").innerText')
            b.run('document.querySelector("[data-tab=label]").click()')
            b.run(DROP, "[data-for=label]", base64.b64encode((photos / "p20.jpg").read_bytes()
                                                             ).decode(), "p20.jpg")
            b.wait(_attr("data-mk-labelled"))
            assert "twenty" in b.run('return document.getElementById("label-results").innerText')

            # dedupe review: another keeper, one member unticked, apply, undo
            b.run('document.querySelector("[data-tab=dedupe]").click();'
                  'document.getElementById("dedupe-start").click()')
            assert b.wait(_attr("data-mk-clusters"), timeout=60) == "1"
            keeper = b.run('return document.querySelector(".member.keeper").dataset.path')
            assert keeper.endswith("p20_copy.png")
            small = str((photos / "p20_small.jpg").resolve())
            jpg = str((photos / "p20.jpg").resolve())
            b.run(f'document.querySelector(\'.member[data-path="{jpg}"] img\').click()')
            b.wait(f'return document.querySelector(".member.keeper").dataset.path === "{jpg}"')
            b.run(f'document.querySelector(\'input[data-path="{small}"]\').click()')
            b.wait(f'return document.querySelector(\'.member[data-path="{small}"]\')'
                   '.classList.contains("excluded")')
            _shot(b, tmp_path, "serve-review.png")
            b.run('document.getElementById("review-apply").click()')
            assert b.wait(_attr("data-mk-moves")) == "applied"
            assert not Path(keeper).exists() and Path(small).exists() and Path(jpg).exists()
            _shot(b, tmp_path, "serve-applied.png")
            b.run('document.getElementById("review-undo").click()')
            assert b.wait(_attr("data-mk-moves") + ' === "undone"')
            assert Path(keeper).exists()

            # the interactive API docs render from the server alone (no CDN)
            b.get(f"http://127.0.0.1:{port}/api/docs")
            b.wait('return (document.querySelector(".swagger-ui .info .title") || {})'
                   '.textContent?.includes("matchkit")')
            b.wait('return document.querySelectorAll(".opblock").length > 10')
            loaded = b.run('return performance.getEntriesByType("resource").map(e => e.name)')
            assert loaded and all(u.startswith(f"http://127.0.0.1:{port}/") for u in loaded)
            _shot(b, tmp_path, "serve-api-docs.png")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)

"""The HTTP API (matchkit serve): keys and scopes, round trips, JSON errors,
limits, and that an acknowledged upload survives a SIGKILL of the server."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from matchkit.cli.commands import cli  # noqa: E402
from matchkit.embed import load_embedder  # noqa: E402
from matchkit.store.gallery import Gallery  # noqa: E402
from matchkit.serve import ServeSettings, create_app  # noqa: E402
from matchkit.serve.keys import KeyStore  # noqa: E402

from conftest import make_photo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def jpeg(seed: int, size=(160, 120), quality: int = 90) -> bytes:
    buf = io.BytesIO()
    make_photo(seed, size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _gallery(folder: Path, seeds, labels=None) -> Path:
    photos = folder / "photos"
    photos.mkdir(parents=True)
    for s in seeds:
        (photos / f"p{s}.jpg").write_bytes(jpeg(s))
    with Gallery(folder / "g") as g:
        g.add(sorted(photos.glob("*.jpg")))
        for s in seeds:
            g.update(photos / f"p{s}.jpg", meta={"year": 2000 + s % 5},
                     labels=[labels[s]] if labels else None)
        g.save()
    return folder / "g"


@pytest.fixture(scope="module")
def galleries(tmp_path_factory, tiny_clip_dir):
    """Gallery 'g' (labelled photos, embedded with the tiny CLIP) and 'other'."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("serve")
    seeds = list(range(10, 16))
    g = _gallery(root / "a", seeds, {s: "odd" if s % 2 else "even" for s in seeds})
    with Gallery(g) as gal:
        gal.embed(load_embedder(str(tiny_clip_dir)))
        gal.save()
    other = _gallery(root / "b", [40, 41, 42], {40: "forty", 41: "forty-one", 42: "forty-one"})
    keys = {}
    for scope in ("read", "write", "admin"):
        keys[scope], _ = KeyStore(g).add(scope, f"test {scope}")
    keys["other"], _ = KeyStore(other).add("admin", "other gallery")
    return {"g": g, "other": other, "keys": keys}


@pytest.fixture(scope="module")
def client(galleries):
    app = create_app({"g": galleries["g"], "other": galleries["other"]},
                     ServeSettings(max_upload_bytes=400_000, max_pixels=2_000_000))
    with TestClient(app) as c:
        yield c


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _is_json_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    assert "Traceback" not in r.text
    return body["error"]["message"]


def upload(client, key, seed, gallery="g", **fields):
    files = {"file": (f"x{seed}.jpg", jpeg(seed), "image/jpeg")}
    return client.post(f"/api/galleries/{gallery}/images", files=files, data=fields,
                       headers=auth(key))


def test_refusals_no_key_wrong_key_read_key_writing_other_gallery(client, galleries):
    keys = galleries["keys"]
    assert "key is required" in _is_json_error(client.get("/api/galleries/g"), 401)
    assert client.get("/api/galleries/g").headers["www-authenticate"] == "Bearer"
    _is_json_error(client.get("/api/galleries/g", headers=auth("mk_wrong")), 401)
    _is_json_error(client.get("/api/galleries/g", headers={"X-API-Key": "mk_wrong"}), 401)
    assert "not write" in _is_json_error(upload(client, keys["read"], 1), 403)
    _is_json_error(client.delete("/api/galleries/g/images/1", headers=auth(keys["read"])), 403)
    assert "not valid for gallery 'g'" in _is_json_error(
        client.get("/api/galleries/g", headers=auth(keys["other"])), 403)
    _is_json_error(upload(client, keys["other"], 2), 403)
    # what each key may do
    assert client.get("/api/galleries/g", headers={"X-API-Key": keys["read"]}).status_code == 200
    listed = client.get("/api/galleries", headers=auth(keys["other"])).json()
    assert [(x["name"], x["scope"]) for x in listed] == [("other", "admin")]


def test_upload_get_update_search_check_label_remove(client, galleries):
    key = galleries["keys"]["write"]
    r = upload(client, key, 77, meta=json.dumps({"year": 2031, "place": "Oslo"}),
               labels=json.dumps(["odd"]))
    assert r.status_code == 201, r.text
    out = r.json()
    image = out["image"]
    assert (out["added"], image["meta"]["place"], image["labels"]) == (1, "Oslo", ["odd"])
    assert [e["embedded"] for e in out["embeddings"]] == [1]
    # stored by content, not by the client's name
    assert Path(image["path"]).name.startswith(out["sha256"]) and "x77" not in image["path"]
    again = upload(client, key, 77)
    assert again.status_code == 200 and again.json()["image"]["id"] == image["id"]

    got = client.get(f"/api/galleries/g/images/{image['id']}", headers=auth(key)).json()
    assert got["meta"] == {"year": 2031, "place": "Oslo"}
    r = client.patch(f"/api/galleries/g/images/{image['id']}", headers=auth(key),
                     json={"meta": {"year": 2032}, "labels": ["even", "new"]})
    assert r.status_code == 200 and r.json()["meta"] == {"year": 2032, "place": "Oslo"}
    assert r.json()["labels"] == ["even", "new"]

    thumb = client.get(image["thumbnail"] + "?side=80", headers=auth(key))
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 80

    q = {"file": ("query.jpg", jpeg(77), "image/jpeg")}
    hits = client.post("/api/galleries/g/search", files=q, data={"k": "3"}, headers=auth(key))
    assert hits.status_code == 200, hits.text
    assert hits.json()[0]["id"] == image["id"] and len(hits.json()) == 3
    assert set(hits.json()[0]) == {"id", "path", "score", "meta"}  # the CLI's shape
    filtered = client.post("/api/galleries/g/search", files=q, headers=auth(key),
                           data={"where": ["year<2031"], "k": "10"}).json()
    assert image["id"] not in [h["id"] for h in filtered] and len(filtered) == 6
    crop = client.post("/api/galleries/g/search", files=q, headers=auth(key),
                       data={"crop": "10,10,80,60", "k": "2"})
    assert crop.status_code == 200 and len(crop.json()) == 2
    text = client.post("/api/galleries/g/search", data={"text": "a photo", "k": "2"},
                       headers=auth(key))
    assert text.status_code == 200 and len(text.json()) == 2

    checked = client.post("/api/galleries/g/check", files=q, headers=auth(key)).json()
    assert set(checked) == {"gallery", "results", "skipped", "stats"}
    best = checked["results"][0]
    assert best["path"] == "query.jpg" and best["matched"]
    assert best["matches"][0]["id"] == image["id"]
    assert best["matches"][0]["relation"] == "exact" and best["matches"][0]["evidence"]

    q10 = {"file": ("ten.jpg", jpeg(10), "image/jpeg")}
    labelled = client.post("/api/galleries/g/label", files=q10, headers=auth(key),
                           data={"calibration": "none"})  # (random tiny CLIP votes too)
    assert labelled.status_code == 200, labelled.text
    assert set(labelled.json()) == {"answers", "stats", "calibration"}
    assert labelled.json()["answers"][0]["path"] == "ten.jpg"
    # without a model, an exact copy of a labelled example gets its label
    q40 = {"file": ("forty.jpg", jpeg(40), "image/jpeg")}
    labelled = client.post("/api/galleries/other/label", files=q40, data={"calibration": "none"},
                           headers=auth(galleries["keys"]["other"]))
    answer = labelled.json()["answers"][0]
    assert answer["label"] == "forty" and answer["neighbours"][0]["labels"] == ["forty"], answer

    stored = Path(image["path"])
    assert stored.exists()
    gone = client.delete(f"/api/galleries/g/images/{image['id']}", headers=auth(key))
    assert gone.json()["removed"] == 1 and not stored.exists()
    _is_json_error(client.get(f"/api/galleries/g/images/{image['id']}", headers=auth(key)), 404)


def test_errors_are_json_with_a_status(client, galleries):
    key = galleries["keys"]["admin"]
    _is_json_error(client.get("/api/nothing-here", headers=auth(key)), 404)
    _is_json_error(client.get("/api/galleries/nope", headers=auth(key)), 404)
    _is_json_error(client.get("/api/galleries/g/images/abc", headers=auth(key)), 422)
    q = {"file": ("q.jpg", jpeg(3), "image/jpeg")}
    assert "cannot parse" in _is_json_error(client.post(
        "/api/galleries/g/search", files=q, data={"where": ["nokey"]}, headers=auth(key)), 422)
    _is_json_error(client.get("/api/galleries/g/images?where=year%3C%3D", headers=auth(key)), 422)
    _is_json_error(client.post("/api/galleries/g/search", files=q, headers=auth(key),
                               data={"crop": "1,2,3"}), 422)
    assert "not inside" in _is_json_error(client.post(
        "/api/galleries/g/search", files=q, data={"crop": "0,0,9999,10"}, headers=auth(key)),
        422)
    _is_json_error(client.post("/api/galleries/g/search", headers=auth(key)), 422)
    bad = {"file": ("evil.jpg", b"<script>not an image</script>", "image/jpeg")}
    assert "not a usable image" in _is_json_error(
        client.post("/api/galleries/g/images", files=bad, headers=auth(key)), 422)
    _is_json_error(upload(client, key, 5, meta="{not json"), 422)
    _is_json_error(upload(client, key, 5, labels=json.dumps([1, 2])), 422)
    _is_json_error(client.patch("/api/galleries/g/images/99999", json={"meta": {}},
                                headers=auth(key)), 404)
    # the gallery 'other' has no embeddings: a conflict, said in one line
    assert "no embeddings" in _is_json_error(client.post(
        "/api/galleries/other/search", files=q, headers=auth(galleries["keys"]["other"])), 409)


def test_unexpected_errors_are_a_json_500_without_traceback(galleries, monkeypatch):
    import matchkit.jobs.labels
    app = create_app({"g": galleries["g"]})
    monkeypatch.setattr(matchkit.jobs.labels, "class_counts",
                        lambda g: (_ for _ in ()).throw(RuntimeError("secret detail")))
    import matchkit.serve.routes_galleries as rg
    monkeypatch.setattr(rg, "class_counts", matchkit.jobs.labels.class_counts)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/api/galleries/g", headers=auth(galleries["keys"]["read"]))
    assert "secret" not in _is_json_error(r, 500)


def test_upload_size_and_pixel_limits(client, galleries):
    key = galleries["keys"]["write"]
    big = os.urandom(500_000)
    _is_json_error(client.post("/api/galleries/g/images", headers=auth(key),
                               files={"file": ("big.jpg", big, "image/jpeg")}), 413)
    buf = io.BytesIO()
    Image.new("L", (2000, 1500)).save(buf, "PNG")  # 3 Mpx, a small file
    assert len(buf.getvalue()) < 400_000
    assert "pixels" in _is_json_error(client.post(
        "/api/galleries/g/images", headers=auth(key),
        files={"file": ("wide.png", buf.getvalue(), "image/png")}), 413)

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b"x" * 100_000
    r = client.post("/api/galleries/g/images", headers={**auth(key),
                    "Content-Type": "multipart/form-data; boundary=abc"}, content=chunks())
    _is_json_error(r, 413)


def test_rate_limit_per_key(galleries):
    app = create_app({"g": galleries["g"]}, ServeSettings(rate=0.01, burst=2))
    read = auth(galleries["keys"]["read"])
    with TestClient(app) as c:
        assert [c.get("/api/galleries/g", headers=read).status_code for _ in range(2)] == [200] * 2
        r = c.get("/api/galleries/g", headers=read)
        _is_json_error(r, 429)
        assert int(r.headers["retry-after"]) > 0
        # another key has its own bucket
        assert c.get("/api/galleries/g", headers=auth(galleries["keys"]["write"])).status_code == 200


def test_no_auth_only_on_loopback(galleries):
    with pytest.raises(ValueError, match="loopback"):
        create_app({"g": galleries["g"]}, ServeSettings(no_auth=True), host="0.0.0.0")
    r = CliRunner().invoke(cli, ["serve", "--gallery", str(galleries["g"]), "--no-auth",
                                 "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "loopback" in r.output
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 2 and "--gallery" in r.output
    r = CliRunner().invoke(cli, ["serve", "--gallery", str(galleries["g"].parent)])
    assert r.exit_code == 2 and "no gallery" in r.output
    app = create_app({"g": galleries["g"]}, ServeSettings(no_auth=True), host="127.0.0.1")
    with TestClient(app) as c:
        assert c.get("/api/galleries/g").status_code == 200


def test_keys_cli_stores_only_hashes(tmp_path, galleries):
    g = _gallery(tmp_path, [50])
    r = CliRunner().invoke(cli, ["serve", "keys", "add", "--gallery", str(g), "--scope",
                                 "write", "--name", "ci"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    stored = (g / "serve" / "keys.json").read_text()
    assert made["key"].startswith("mk_") and made["key"] not in stored
    assert (os.stat(g / "serve" / "keys.json").st_mode & 0o777) == 0o600
    listed = json.loads(CliRunner().invoke(cli, ["serve", "keys", "list", "--gallery",
                                                 str(g)]).output)
    assert listed == [{k: made[k] for k in ("id", "scope", "name", "created")}]
    app = create_app([g])
    with TestClient(app) as c:
        assert c.get(f"/api/galleries/{g.name}", headers=auth(made["key"])).status_code == 200
        r = CliRunner().invoke(cli, ["serve", "keys", "remove", "--gallery", str(g), made["id"]])
        assert r.exit_code == 0
        _is_json_error(c.get(f"/api/galleries/{g.name}", headers=auth(made["key"])), 401)
    r = CliRunner().invoke(cli, ["serve", "keys", "add", "--gallery", str(tmp_path / "none")])
    assert r.exit_code == 2


def test_reads_stay_consistent_while_uploads_run(tmp_path):
    g = _gallery(tmp_path, [60, 61])
    key, _ = KeyStore(g).add("write")
    app = create_app([g], ServeSettings(readers=3))
    seen, errors = [], []
    with TestClient(app) as c:
        def reader():
            for _ in range(15):
                r = c.get(f"/api/galleries/{g.name}/images", headers=auth(key))
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                body = r.json()
                if body["total"] != len(body["images"]):
                    errors.append(body)
                seen.append(body["total"])
        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        codes = [upload(c, key, 100 + i, gallery=g.name).status_code for i in range(6)]
        for t in threads:
            t.join()
        assert codes == [201] * 6 and not errors
        assert c.get(f"/api/galleries/{g.name}", headers=auth(key)).json()["images"] == 8
    assert set(seen) <= set(range(2, 9))
    with Gallery(g, create=False) as gal:
        assert len(gal) == 8 and gal.verify().ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(g: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "matchkit.cli", "serve", "--gallery", str(g),
                             "--port", str(port), "--no-auth", "--rate", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode())


def test_acknowledged_uploads_survive_sigkill(tmp_path):
    import httpx

    g = _gallery(tmp_path, [70])
    port = _free_port()
    proc = _start_server(g, port)
    acked: dict[str, int] = {}
    stop = threading.Event()

    def client(worker: int):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            for i in range(200):
                if stop.is_set():
                    return
                data = jpeg(1000 + worker * 200 + i, (96, 72))
                try:
                    r = c.post(f"/api/galleries/{g.name}/images",
                               files={"file": ("u.jpg", data, "image/jpeg")})
                except httpx.HTTPError:
                    return  # the server died mid-request: not acknowledged
                if r.status_code in (200, 201):
                    acked[r.json()["sha256"]] = r.json()["image"]["id"]

    threads = [threading.Thread(target=client, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 12
    with Gallery(g, create=False) as gal:
        rows = gal.images()
        by_sha = {r.sha256: r for r in rows.values()}
        missing = [s for s in acked if s not in by_sha]
        assert not missing, f"{len(missing)} acknowledged uploads lost"
        for sha, image_id in acked.items():
            assert by_sha[sha].id == image_id and Path(by_sha[sha].path).is_file()
    proc = _start_server(g, port)  # and the restarted server serves them
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/galleries/{g.name}")
        assert r.json()["images"] >= len(acked) + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_openapi_schema_lists_every_route(client):
    schema = client.get("/api/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/api/galleries", "/api/galleries/{gallery}", "/api/galleries/{gallery}/images",
            "/api/galleries/{gallery}/images/{image_id}",
            "/api/galleries/{gallery}/images/{image_id}/thumbnail",
            "/api/galleries/{gallery}/search", "/api/galleries/{gallery}/check",
            "/api/galleries/{gallery}/label"} <= paths
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])


def test_api_docs_load_swagger_ui_from_the_server_not_a_cdn(client):
    import re

    page = client.get("/api/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.search(r"https?://", page.text), page.text  # nothing outside the server
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 500, asset
    licence = client.get("/app/swagger-ui/LICENSE")
    assert licence.status_code == 200 and "Apache License" in licence.text


def _wait_done(c, url: str, key: str) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = c.get(url, headers=auth(key)).json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(job)


def test_dedupe_job_review_apply_undo(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    make_photo(80).save(photos / "a.jpg", quality=92)
    make_photo(80).resize((160, 120)).save(photos / "a_small.jpg", quality=80)
    make_photo(80).save(photos / "a_copy.png")
    make_photo(81).save(photos / "b.jpg", quality=90)
    with Gallery(tmp_path / "g") as g:
        g.add(sorted(photos.iterdir()))
        g.save()
    gdir = tmp_path / "g"
    write, _ = KeyStore(gdir).add("write")
    admin, _ = KeyStore(gdir).add("admin")
    with TestClient(create_app([gdir])) as c:
        base = "/api/galleries/g/dedupe"
        r = c.post(base, json={"level": "copies"}, headers=auth(write))
        assert r.status_code == 202, r.text
        job = _wait_done(c, f"{base}/{r.json()['id']}", write)
        assert job["state"] == "done" and job["stats"]["clusters"] == 1
        url = f"{base}/{job['id']}"
        report = c.get(f"{url}/result", headers=auth(write)).json()
        cluster = report["clusters"][0]
        assert set(Path(m).name for m in cluster["members"]) == {"a.jpg", "a_small.jpg",
                                                                 "a_copy.png"}
        by_name = {Path(m).name: m for m in cluster["members"]}
        assert cluster["keep"] == by_name["a_copy.png"]  # lossless wins
        other, png, small = by_name["a.jpg"], by_name["a_copy.png"], by_name["a_small.jpg"]
        # review: another keeper, the PNG stays where it is
        bad = c.put(f"{url}/review", json={"keepers": {"0": "/nope.jpg"}}, headers=auth(write))
        _is_json_error(bad, 422)
        r = c.put(f"{url}/review", json={"keepers": {"0": other}, "excluded": [png]},
                  headers=auth(write))
        assert r.status_code == 200, r.text
        reviewed = c.get(f"{url}/result?reviewed=true", headers=auth(write)).json()
        assert reviewed["clusters"][0]["keep"] == other
        assert png not in reviewed["clusters"][0]["members"]
        _is_json_error(c.post(f"{url}/apply", headers=auth(write)), 403)  # admin only
        applied = c.post(f"{url}/apply", headers=auth(admin)).json()
        moved = [m for m in applied["moves"] if m["state"] == "moved"]
        assert [m["src"] for m in moved] == [small]
        assert not Path(small).exists() and Path(png).exists() and Path(other).exists()
        assert Path(moved[0]["dst"]).is_relative_to(gdir / "serve" / "jobs")
        _is_json_error(c.post(f"{url}/apply", headers=auth(admin)), 409)  # not twice
        undone = c.post(f"{url}/undo", headers=auth(admin)).json()
        assert undone["counts"] == {"restored": 1} and Path(small).exists()
        _is_json_error(c.get(f"{base}/0123456789abcdef", headers=auth(write)), 404)
        _is_json_error(c.get(f"{base}/../../x", headers=auth(write)), 404)
        listed = c.get(base, headers=auth(write)).json()
        assert [j["id"] for j in listed] == [job["id"]] and "report" not in listed[0]


def test_cancel_stops_a_running_dedupe_job_which_reports_progress(tmp_path, monkeypatch):
    from matchkit.serve.jobs import Jobs

    gdir = _gallery(tmp_path, range(90, 96))
    write, _ = KeyStore(gdir).add("write")
    phases: list[tuple] = []
    real = Jobs.progress

    def progress(self, job_id, phase, done, total):
        phases.append((job_id, phase))
        if phase == "match" and len({j for j, _ in phases}) == 1:
            self.cancel(job_id)  # as DELETE does, while the first job runs
        real(self, job_id, phase, done, total)

    monkeypatch.setattr(Jobs, "progress", progress)
    with TestClient(create_app([gdir])) as c:
        base = "/api/galleries/g/dedupe"
        first = c.post(base, json={}, headers=auth(write)).json()["id"]
        deadline = time.monotonic() + 60
        while (job := c.get(f"{base}/{first}", headers=auth(write)).json())["stopped"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["state"] == "cancelled" and "stats" not in job
        assert job["progress"] == {"phase": "match", "done": 0, "total": 6}
        assert [p for _, p in phases][:3] == ["add", "add", "match"]
        assert "cluster" not in [p for _, p in phases]  # stopped in "match"
        _is_json_error(c.get(f"{base}/{first}/result", headers=auth(write)), 409)
        # the writer is free again: the next job runs to the end, with its progress
        second = c.post(base, json={}, headers=auth(write)).json()["id"]
        job = _wait_done(c, f"{base}/{second}", write)
        assert job["state"] == "done" and job["stopped"] is None
        assert [p for j, p in phases if j == second][-1] == "report"
        assert set(job["progress"]) == {"phase", "done", "total"}
        # a finished job cannot be cancelled any more
        assert c.delete(f"{base}/{second}", headers=auth(write)).json()["state"] == "done"


def test_cancel_takes_effect_inside_a_long_phase_not_at_its_end(tmp_path, monkeypatch):
    """The candidate search of a big gallery is one phase for minutes: a cancel
    must stop it from inside (checkpoints between index calls), within seconds."""
    import matchkit.match.candidates as candidates
    from matchkit.index.hamming import HammingIndex

    gdir = _gallery(tmp_path, range(90, 96))
    write, _ = KeyStore(gdir).add("write")
    searches: list[float] = []
    real_search = HammingIndex.search

    def slow_search(self, codes, k):  # as a 10,000-image gallery would be
        searches.append(time.monotonic())
        time.sleep(0.2)
        return real_search(self, codes, k)

    monkeypatch.setattr(HammingIndex, "search", slow_search)
    monkeypatch.setattr(candidates, "SEARCH_CHUNK", 10)  # 6 x 100 descriptors: 60 calls, 12 s
    with TestClient(create_app([gdir])) as c:
        base = "/api/galleries/g/dedupe"
        job_id = c.post(base, json={}, headers=auth(write)).json()["id"]
        deadline = time.monotonic() + 30
        while not searches:  # inside the candidate search
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cancelled_at = time.monotonic()
        assert c.delete(f"{base}/{job_id}", headers=auth(write)).json()["state"] == "cancelled"
        while (job := c.get(f"{base}/{job_id}", headers=auth(write)).json())["stopped"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    assert job["state"] == "cancelled" and job["progress"]["phase"] == "match"
    after = [t for t in searches if t > cancelled_at]
    assert len(after) <= 8, len(after)  # stopped a few index calls in, not after 60
    assert not after or after[-1] - cancelled_at < 3.0


def test_draining_answers_queued_requests_503_and_lets_running_ones_finish(galleries,
                                                                          monkeypatch):
    """What SIGTERM does first (serve.server): queued reads are not waited for."""
    import matchkit.serve.routes_galleries as rg

    read = auth(galleries["keys"]["read"])
    app = create_app({"g": galleries["g"]}, ServeSettings(readers=1))
    started, release = threading.Event(), threading.Event()
    real = rg._stats

    def held(name, g):
        started.set()
        release.wait(20)
        return real(name, g)

    with TestClient(app) as c:
        c.get("/api/galleries/g", headers=read)  # the reader is open (warm) before the test
        monkeypatch.setattr(rg, "_stats", held)
        codes: dict[int, int] = {}

        def ask(n):
            codes[n] = c.get("/api/galleries/g", headers=read).status_code
        first = threading.Thread(target=ask, args=(0,))
        first.start()
        assert started.wait(20)  # request 0 runs on the only reader; the others queue
        queued = [threading.Thread(target=ask, args=(n,)) for n in (1, 2, 3)]
        for t in queued:
            t.start()
        time.sleep(0.5)
        app.state.matchkit.pools.drain()
        for t in queued:
            t.join(10)
        assert [codes.get(n) for n in (1, 2, 3)] == [503, 503, 503]  # not waited for
        assert 0 not in codes  # the running one is still running
        release.set()
        first.join(20)
        assert codes[0] == 200
        assert "shutting down" in _is_json_error(c.get("/api/galleries/g", headers=read), 503)


def test_cors_off_unless_asked_and_slow_requests_time_out(galleries, monkeypatch):
    import matchkit.serve.routes_galleries as rg

    read = auth(galleries["keys"]["read"])
    origin = {"Origin": "https://evil.example", **read}
    with TestClient(create_app({"g": galleries["g"]})) as c:
        r = c.get("/api/galleries/g", headers=origin)
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    app = create_app({"g": galleries["g"]}, ServeSettings(cors_origins=("https://ok.example",),
                                                          timeout=0.2))
    real = rg._stats
    monkeypatch.setattr(rg, "_stats", lambda name, g: time.sleep(1.0) or real(name, g))
    with TestClient(app) as c:
        ok = c.get("/api/galleries", headers={"Origin": "https://ok.example", **read})
        assert ok.headers["access-control-allow-origin"] == "https://ok.example"
        assert "took longer" in _is_json_error(c.get("/api/galleries/g", headers=read), 504)


def test_readers_share_indexes_follow_saved_states_and_keep_their_labelers(tmp_path):
    """Two reader threads hold one copy of each index; after a write is saved
    they move to the saved state (loaded, not rebuilt), their labeler carried
    over; a write not yet saved leaves them on the older state."""
    from concurrent.futures import ThreadPoolExecutor

    from matchkit.jobs.classify import Labeler
    from matchkit.config import Settings
    from matchkit.serve import workers

    seeds = range(110, 116)
    gdir = _gallery(tmp_path, seeds, labels={s: "ab"[s % 2] for s in seeds}).resolve()
    readers = [ThreadPoolExecutor(1) for _ in range(2)]

    def state(n):
        return readers[n].submit(workers.reader_state, gdir, Settings()).result()

    def fit(g):
        return Labeler(k=3, calibration="none").fit(g)

    try:
        a, b = state(0), state(1)
        assert a.gallery is not b.gallery  # each thread its own connection...
        assert a.gallery.orb_index is b.gallery.orb_index  # ...one copy of each index
        lab = readers[0].submit(a.labeler, "key", fit).result()
        n_orb = len(a.gallery.orb_index)
        extra = tmp_path / "extra.jpg"
        extra.write_bytes(jpeg(999))
        with Gallery(gdir, create=False) as g:
            g.add([extra])  # committed, index files not saved yet
            assert state(0) is a  # answers from the older state meanwhile
            g.save()
        a2, b2 = state(0), state(1)
        assert a2 is not a and a2.gallery.orb_index is b2.gallery.orb_index
        assert len(a2.gallery.orb_index) > n_orb and not a2.gallery._dirty  # loaded, not rebuilt
        assert readers[0].submit(a2.labeler, "key", fit).result() is lab  # no new fit
        assert lab.gallery_ is a2.gallery
    finally:
        for n, r in enumerate(readers):
            r.submit(workers.forget_reader_state).result()
            r.shutdown()


def test_sigterm_answers_queued_uploads_503_and_exits_without_running_them(tmp_path):
    """A stop does not work through the queue: queued uploads get 503 (not
    acknowledged, so not in the gallery), acknowledged ones are kept."""
    import httpx

    g = _gallery(tmp_path, [71])
    port = _free_port()
    proc = _start_server(g, port)
    codes: list[int] = []
    acked: list[str] = []
    go = threading.Event()

    def client(worker: int):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for i in range(100):
                data = jpeg(3000 + worker * 100 + i, (96, 72))
                try:
                    r = c.post(f"/api/galleries/{g.name}/images",
                               files={"file": ("u.jpg", data, "image/jpeg")})
                except httpx.HTTPError:
                    return  # the server closed the connection: it is stopping
                codes.append(r.status_code)
                if r.status_code in (200, 201):
                    acked.append(r.json()["sha256"])
                    go.set()
                if r.status_code == 503:
                    return

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    assert go.wait(30)
    time.sleep(1.0)  # eight clients, one writer: uploads queue up
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    proc.wait(timeout=30)
    stopped_in = time.monotonic() - t0
    for t in threads:
        t.join(30)
    assert set(codes) <= {200, 201, 503}, codes
    assert 503 in codes  # queued uploads were answered, not run
    assert stopped_in < 10
    with Gallery(g, create=False) as gal:
        have = {r.sha256 for r in gal.images().values()}
    assert set(acked) <= have


def test_a_stopping_server_interrupts_its_running_dedupe_job(tmp_path, monkeypatch):
    import matchkit.match.candidates as candidates
    from matchkit.index.hamming import HammingIndex

    gdir = _gallery(tmp_path, range(90, 96))
    write, _ = KeyStore(gdir).add("write")
    searches: list[float] = []
    real_search = HammingIndex.search

    def slow_search(self, codes, k):
        searches.append(time.monotonic())
        time.sleep(0.2)
        return real_search(self, codes, k)

    monkeypatch.setattr(HammingIndex, "search", slow_search)
    monkeypatch.setattr(candidates, "SEARCH_CHUNK", 10)
    app = create_app([gdir])
    with TestClient(app) as c:
        base = "/api/galleries/g/dedupe"
        job_id = c.post(base, json={}, headers=auth(write)).json()["id"]
        deadline = time.monotonic() + 30
        while not searches:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        app.state.matchkit.drain()  # what SIGTERM does first
        while (job := app.state.matchkit.jobs["g"].load(job_id))["stopped"] is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    assert job["state"] == "interrupted" and job["report"] is None
    assert len(searches) < 20  # of 60


def test_the_stop_signal_drains_on_a_thread_of_its_own():
    """The drain a SIGTERM starts never waits for a lock the interrupted
    main thread holds (``server.start_drain``): inline, the handler would
    wait for the lock forever."""
    from types import SimpleNamespace

    from matchkit.serve.server import start_drain

    lock, drained = threading.Lock(), threading.Event()

    def drain():
        with lock:
            drained.set()

    app = SimpleNamespace(state=SimpleNamespace(matchkit=SimpleNamespace(drain=drain)))
    with lock:  # (what the event loop held when the signal came)
        t = start_drain(app)
        assert not drained.wait(0.2)
    assert drained.wait(5)
    t.join(5)
    assert not t.is_alive()

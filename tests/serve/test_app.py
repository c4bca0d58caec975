"""The search service's JSON API through Starlette's test client (no socket): every endpoint,
every error a client can cause, the token, the limits, and the event loop kept free."""

import base64
import io
import json
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (pip install 'lit[serve]') is not installed")

STREET = "street/DSC_0410.JPG"


def photo(built_index, name=STREET):
    return (built_index[0] / name).read_bytes()


def assert_error(res, status):
    """A 4xx answer is JSON with one sentence, never a traceback."""
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in res.text and "tmp" not in body["error"]
    return body["error"]


# ---------------------------------------------------------------------------- reading
def test_health_counts_the_images_and_names_model_and_index(shared_client, built_index):
    h = shared_client.get("/api/health").json()
    assert h["status"] == "ok" and h["images"] == 8 and h["index"] == str(built_index[1])
    assert h["model"] and h["text_search"] is True and h["write_token"] is False


def test_an_uploaded_photo_ranks_as_the_pipeline_ranks_it(shared_client, shared_service, built_index):
    import lit.pipeline as pipeline

    res = shared_client.post("/api/search", files={"image": ("DSC_0410.JPG", photo(built_index), "image/jpeg")},
                             data={"topk": "8", "keep_unscored": "true"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["query"] == "DSC_0410.JPG" and [r["rank"] for r in body["results"]] == list(range(1, 9))
    index, info = pipeline.open_index(built_index[1])
    q = pipeline.queries_from_images(shared_service.model, [str(built_index[0] / STREET)], info)
    expected = pipeline.search(index, info, q.features, q.names, topk=8, keep_unscored=True)[0]
    assert [r["name"] for r in body["results"]] == [h.name for h in expected.hits]
    assert [r["score"] for r in body["results"]] == pytest.approx([h.score for h in expected.hits])
    # the same photo by its name in the index: the same ranking
    by_name = shared_client.post("/api/search", data={"name": STREET, "topk": "8", "keep_unscored": "true"}).json()
    assert by_name["results"] == body["results"]


def test_exclude_self_leaves_the_query_photo_out(shared_client):
    res = shared_client.post("/api/search", data={"name": STREET, "topk": "8", "exclude_self": "true", "keep_unscored": "true"}).json()
    names = [r["name"] for r in res["results"]]
    assert STREET not in names and len(names) == 7


def test_text_search_answers_in_the_shape_of_lit_search_json(shared_client):
    res = shared_client.post("/api/search", data={"text": "  a   church ", "topk": "3"})
    assert res.status_code == 200
    body = res.json()
    assert body["query"] == "a church" and body["kind"] == "text" and len(body["results"]) == 3
    assert all(set(r) == {"rank", "name", "score"} for r in body["results"])
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_names_photo_and_thumbnail(shared_client, built_index):
    names = shared_client.get("/api/images", params={"limit": 3}).json()
    assert names["images"] == 8 and len(names["names"]) == 3
    original = shared_client.get(f"/api/images/{STREET}")
    assert original.status_code == 200 and original.content == photo(built_index)
    thumb = shared_client.get(f"/api/images/{STREET}", params={"size": 64})
    assert thumb.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(thumb.content)).size) == 64


def test_matches_and_attention_of_indexed_and_uploaded_photos(shared_client, built_index):
    m = shared_client.get("/api/match", params={"a": STREET, "b": "street/DSC_0411.JPG"}).json()
    assert m["a"] == STREET and m["matches"] and m["score"] > 0 and m["rule"]
    (wa, ha), (wb, hb) = m["size_a"], m["size_b"]
    for x in m["matches"]:
        assert 0 <= x["xa"] <= wa and 0 <= x["ya"] <= ha and 0 <= x["xb"] <= wb and 0 <= x["yb"] <= hb
        assert -1 <= x["similarity"] <= 1
    sims = [x["similarity"] for x in m["matches"]]
    assert sims == sorted(sims, reverse=True)
    # the query photo uploaded instead of named: the same matches
    up = shared_client.post("/api/match", files={"image": ("q.jpg", photo(built_index), "image/jpeg")},
                            data={"b": "street/DSC_0411.JPG"}).json()
    assert up["a"] == "q.jpg" and up["matches"] == m["matches"]
    first = m["matches"][0]
    att = shared_client.get(f"/api/attention/{STREET}", params={"scale": first["scale_a"], "ids": str(first["id_a"])}).json()
    h, w = att["grid"]
    assert att["size"] == m["size_a"] and [a["id"] for a in att["maps"]] == [first["id_a"]]
    data = base64.b64decode(att["maps"][0]["data"])
    assert len(data) == h * w and max(data) == 255  # divided by its peak
    every = shared_client.get(f"/api/attention/{STREET}").json()
    assert len(every["maps"]) == 8  # the tiny model's N
    up_att = shared_client.post("/api/attention", files={"image": ("q.jpg", photo(built_index), "image/jpeg")},
                                data={"scale": str(first["scale_a"]), "ids": str(first["id_a"])}).json()
    assert up_att["maps"] == att["maps"]


def test_page_static_files_and_openapi(shared_client):
    page = shared_client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]
    assert shared_client.get("/static/app.js").status_code == 200
    assert shared_client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert_error(shared_client.get("/static/secret.py"), 404)
    spec = shared_client.get("/openapi.json").json()
    assert {"/api/search", "/api/images", "/api/match", "/api/health"} <= set(spec["paths"])
    assert shared_client.get("/docs").status_code == 200


@pytest.mark.parametrize("request_, status, says", [
    (("post", "/api/search", {"files": {"image": ("x.jpg", b"not a photo", "image/jpeg")}}), 400, "x.jpg: not an image"),
    (("post", "/api/search", {"files": {"image": ("x.jpg", b"", "image/jpeg")}}), 400, "x.jpg: empty file"),
    (("post", "/api/search", {"data": {"name": "nope.jpg"}}), 404, "'nope.jpg' is not in the index"),
    (("post", "/api/search", {"data": {"text": "   "}}), 400, "the text query is empty"),
    (("post", "/api/search", {"data": {"text": "a church", "topk": "0"}}), 400, "topk must be between 1 and 1000, got 0"),
    (("post", "/api/search", {"data": {"text": "a church", "topk": "1001"}}), 400, "topk must be between 1 and 1000"),
    (("post", "/api/search", {"data": {"text": "a church", "topk": "ten"}}), 422, "topk:"),
    (("post", "/api/search", {"data": {}}), 400, "give exactly one of the fields image, text and name"),
    (("post", "/api/search", {"data": {"text": "a", "name": STREET}}), 400, "(got text, name)"),
    (("post", "/api/search", {"content": b"{}", "headers": {"content-type": "application/json"}}), 400, "exactly one"),
    (("get", "/api/images/nope.jpg", {}), 404, "not in the index"),
    (("get", f"/api/images/{STREET}", {"params": {"size": 5}}), 400, "size must be between 16 and 2048"),
    (("get", "/api/match", {"params": {"a": STREET, "b": "nope.jpg"}}), 404, "'nope.jpg' is not in the index"),
    (("get", "/api/match", {"params": {"a": STREET}}), 422, "b: missing"),
    (("get", f"/api/attention/{STREET}", {"params": {"ids": "1,x"}}), 422, "ids: comma-separated"),
    (("get", f"/api/attention/{STREET}", {"params": {"ids": "99"}}), 400, "between 0 and 7, got 99"),
    (("get", f"/api/attention/{STREET}", {"params": {"scale": "9"}}), 400, "scale must be between"),
    (("delete", "/api/images/nope.jpg", {}), 404, "not in the index"),
    (("post", "/api/images", {"files": {"image": ("a.jpg", b"garbage", "image/jpeg")}}), 400, "a.jpg: not an image"),
    (("post", "/api/images", {"data": {"name": "a.jpg"}}), 422, "image: missing"),
])
def test_bad_requests_get_a_one_sentence_4xx(shared_client, request_, status, says):
    method, url, kwargs = request_
    assert says in assert_error(shared_client.request(method.upper(), url, **kwargs), status)


@pytest.mark.parametrize("name, says", [
    ("../escape.jpg", "relative path without '.' or '..'"),
    ("/abs.jpg", "relative path"),
    ("notes.txt", "image extension"),
    ("a\\b.jpg", "backslashes"),
])
def test_unusable_photo_names_are_refused(shared_client, built_index, name, says):
    res = shared_client.post("/api/images", files={"image": ("x.jpg", photo(built_index), "image/jpeg")},
                             data={"name": name})
    assert says in assert_error(res, 400)


def test_limits_on_upload_size_and_pixels(shared_service, built_index):
    from fastapi.testclient import TestClient

    from lit.serve import create_app
    from lit.serve.service import SearchService

    with TestClient(create_app(shared_service, max_upload_bytes=1000, close=False)) as c:
        res = c.post("/api/search", files={"image": ("big.jpg", photo(built_index), "image/jpeg")})
        assert "larger than the upload limit of 1000 bytes" in assert_error(res, 413)
    small = SearchService(shared_service.index, max_pixels=1000)
    with TestClient(create_app(small, close=False)) as c:
        res = c.post("/api/search", files={"image": ("big.jpg", photo(built_index), "image/jpeg")})
        assert "big.jpg: too large" in assert_error(res, 413)


# ---------------------------------------------------------------------------- writing
def test_an_added_photo_is_found_persisted_and_gone_after_delete(client, service, index_copy):
    from lit.pipeline.live import LiveIndex

    new = (index_copy[0] / "terrace" / "terrace1.jpg").read_bytes()
    res = client.post("/api/images", files={"image": ("whatever.jpg", new, "image/jpeg")}, data={"name": "new/t.jpg"})
    assert res.status_code == 201, res.text
    assert res.json() == {"name": "new/t.jpg", "replaced": False, "images": 9}
    assert (service.upload_dir / "new" / "t.jpg").read_bytes() == new
    found = client.post("/api/search", files={"image": ("t.jpg", new, "image/jpeg")}, data={"topk": "9", "keep_unscored": "true"}).json()
    names = [r["name"] for r in found["results"]]
    assert "new/t.jpg" in names
    score = {r["name"]: r["score"] for r in found["results"]}
    assert score["new/t.jpg"] == pytest.approx(score["terrace/terrace1.jpg"])  # the same photo, the same score
    assert "new/t.jpg" in [r["name"] for r in client.post("/api/search", data={"text": "a house", "topk": "9"}).json()["results"]]
    assert client.get("/api/images/new/t.jpg").content == new
    with LiveIndex.open(index_copy[1], model=service.model, device="cpu", load=False) as other:  # on disk already
        assert "new/t.jpg" in other.names()
    again = client.post("/api/images", files={"image": ("t.jpg", new, "image/jpeg")}, data={"name": "new/t.jpg"}).json()
    assert again["replaced"] is True and again["images"] == 9

    gone = client.delete("/api/images/new/t.jpg")
    assert gone.status_code == 200 and gone.json() == {"removed": "new/t.jpg", "images": 8}
    assert not (service.upload_dir / "new" / "t.jpg").exists()
    after = client.post("/api/search", files={"image": ("t.jpg", new, "image/jpeg")}, data={"topk": "9", "keep_unscored": "true"}).json()
    assert "new/t.jpg" not in [r["name"] for r in after["results"]] and len(after["results"]) == 8
    assert_error(client.get("/api/images/new/t.jpg"), 404)
    # an indexed photo of the image root: out of the index, its file untouched
    assert client.delete(f"/api/images/{STREET}").status_code == 200
    assert (index_copy[0] / STREET).is_file()
    assert client.get("/api/health").json()["images"] == 7


def test_the_write_endpoints_need_the_token(service, index_copy):
    from fastapi.testclient import TestClient

    from lit.serve import create_app

    new = (index_copy[0] / "terrace" / "terrace1.jpg").read_bytes()
    with TestClient(create_app(service, token="s3cret-token"), raise_server_exceptions=False) as c:
        files = {"image": ("t.jpg", new, "image/jpeg")}
        assert "Authorization: Bearer" in assert_error(c.post("/api/images", files=files), 401)
        assert_error(c.post("/api/images", files=files, headers={"Authorization": "Bearer wrong"}), 403)
        assert_error(c.delete(f"/api/images/{STREET}"), 401)
        assert c.get("/api/health").json()["write_token"] is True
        assert c.post("/api/search", data={"name": STREET}).status_code == 200  # reading needs none
        ok = c.post("/api/images", files=files, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 201
        assert c.delete("/api/images/t.jpg", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_searches_run_alongside_adds_and_deletes_and_see_a_whole_index(client, index_copy):
    import threading

    new = (index_copy[0] / "terrace" / "terrace1.jpg").read_bytes()
    before = set(client.get("/api/images").json()["names"])
    seen, failures = [], []

    def reader(i):
        for _ in range(4):
            res = (client.post("/api/search", data={"name": STREET, "topk": "20", "keep_unscored": "true"}) if i % 2
                   else client.post("/api/search", data={"text": "a house", "topk": "20"}))
            if res.status_code != 200:
                failures.append(res.text)
            else:
                seen.append({r["name"] for r in res.json()["results"]})

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert client.post("/api/images", files={"image": ("t.jpg", new, "image/jpeg")}, data={"name": "t.jpg"}).status_code == 201
    assert client.delete("/api/images/t.jpg").status_code == 200
    for t in threads:
        t.join(300)
    assert not failures and len(seen) == 16
    # every answer ranks the whole index of one moment: before, during or after the add
    assert all(names in (before, before | {"t.jpg"}) for names in seen)


def test_pages_of_other_sites_cannot_add_or_delete(client, index_copy):
    new = (index_copy[0] / "terrace" / "terrace1.jpg").read_bytes()
    files = {"image": ("t.jpg", new, "image/jpeg")}
    evil = {"Origin": "http://evil.example"}
    assert "another site (http://evil.example)" in assert_error(client.post("/api/images", files=files, headers=evil), 403)
    assert_error(client.delete(f"/api/images/{STREET}", headers=evil), 403)
    assert_error(client.delete(f"/api/images/{STREET}", headers={"Origin": "null"}), 403)
    assert client.get("/api/health").json()["images"] == 8
    same = {"Origin": "http://testserver"}  # the page's own origin (the test client's host)
    assert client.post("/api/images", files=files, data={"name": "t.jpg"}, headers=same).status_code == 201


# ---------------------------------------------------------------------------- the event loop
class _SlowService:
    """A stand-in service whose text search sleeps (blocking, as the model does)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def health(self):
        return {"status": "ok", "images": 0}

    def search_text(self, text, topk=10):
        time.sleep(self.seconds)
        return {"query": text, "results": []}

    def close(self):
        pass


def test_blocking_work_runs_off_the_event_loop_under_a_time_limit():
    import anyio
    import httpx

    from lit.serve import create_app

    app = create_app(_SlowService(1.5), timeout=0.5)
    app_fast = create_app(_SlowService(1.0), timeout=10)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app_fast), base_url="http://t") as c:
            done = []

            async def slow():
                await c.post("/api/search", data={"text": "x"})
                done.append("slow")

            async def fast():
                await anyio.sleep(0.1)
                await c.get("/api/health")
                done.append("health")

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                tg.start_soon(fast)
            assert done == ["health", "slow"]  # health answered while the slow search blocked its thread
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            start = time.perf_counter()
            res = await c.post("/api/search", data={"text": "x"})
            assert time.perf_counter() - start < 1.2
            assert res.status_code == 504 and "limit of 0.5 s" in json.loads(res.text)["error"]

    anyio.run(main)

"""Photos whose file names are not valid UTF-8 or hold control characters: every answer of
the service is valid UTF-8 (names shown through ``display_name``, the exact bytes beside them
as ``name_bytes``), and the shown name is enough to ask for the photo again."""

import json
import os
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'lit[serve]') is not installed")

LATIN1 = os.fsdecode(b"caf\xe9.jpg")  # the names of conftest's odd_index
NEWLINE = "new\nline.jpg"


@pytest.fixture
def odd_client(odd_index, serve_model):
    from fastapi.testclient import TestClient

    from lit.serve import create_app, open_service

    svc = open_service(odd_index[1], model=serve_model, device="cpu", warm_up=False)
    with TestClient(create_app(svc), raise_server_exceptions=False) as c:
        yield c
    svc.close()


def body(res) -> dict:
    assert res.status_code in (200, 201), res.text
    return json.loads(res.content.decode("utf-8"))  # strict: a lone surrogate would not encode at all


def test_listed_and_found_names_are_valid_utf_8_with_their_bytes(odd_client):
    from lit._names import decode_name

    assert sorted(body(odd_client.get("/api/images"))["names"]) == ["caf\\xe9.jpg", "new\\nline.jpg", "street.jpg"]
    found = body(odd_client.post("/api/search", data={"name": "caf\\xe9.jpg", "topk": "3", "keep_unscored": "true"}))
    assert found["query"] == "caf\\xe9.jpg" and decode_name(bytes.fromhex(found["query_bytes"])) == LATIN1
    by_name = {r["name"]: r for r in found["results"]}
    assert set(by_name) == {"caf\\xe9.jpg", "new\\nline.jpg", "street.jpg"}
    assert decode_name(bytes.fromhex(by_name["new\\nline.jpg"]["name_bytes"])) == NEWLINE
    assert "name_bytes" not in by_name["street.jpg"]
    assert found["results"][0]["name"] == "caf\\xe9.jpg"  # the photo itself first


def test_a_shown_name_fetches_matches_and_removes_the_photo(odd_client, built_index):
    shown = "caf\\xe9.jpg"
    url = "/api/images/" + quote(shown)
    original = (built_index[0] / "terrace" / "terrace0.jpg").read_bytes()
    assert odd_client.get(url).content == original
    assert odd_client.get(url + "?size=32").headers["content-type"] == "image/jpeg"
    m = body(odd_client.get("/api/match", params={"a": shown, "b": "new\\nline.jpg"}))
    assert (m["a"], m["b"]) == (shown, "new\\nline.jpg") and "a_bytes" in m and "b_bytes" in m
    att = body(odd_client.get("/api/attention/" + quote("new\\nline.jpg"), params={"ids": "0"}))
    assert att["name"] == "new\\nline.jpg" and len(att["maps"]) == 1
    # the literal name is not there: a name that only looks like an escape is still unknown
    assert odd_client.get("/api/images/" + quote("caf\\xe8.jpg")).status_code == 404
    gone = body(odd_client.delete(url))
    assert gone["removed"] == shown and gone["images"] == 2
    assert odd_client.get(url).status_code == 404

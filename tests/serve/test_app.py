"""The HTTP service through FastAPI's TestClient: answers, metadata, and a 4xx (never a 500) for bad input."""

from __future__ import annotations

import pytest

HISTORY = ["F00001", "K01002", "F01003", "K01004"]


def test_recommend_answers_with_the_datas_ids_and_reports_unknown_ones(client, recommender):
    r = client("sasrec").post("/recommend", json={"history": [*HISTORY, "nope"], "domain": "Kitchen", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown_items"] == ["nope"] and body["fallback"] is None and body["history_used"] == 4
    assert [i["item"] for i in body["items"]] == recommender("sasrec").recommend(HISTORY, "Kitchen", k=5).item_ids


def test_timestamped_events_and_the_batch_form(client):
    c = client("sasrec")
    events = [{"item": "K01004", "ts": 4}, {"item": "F00001", "ts": 1}, {"item": "F01003", "ts": 3},
              {"item": "K01002", "ts": 2}]
    single = c.post("/recommend", json={"history": HISTORY, "domain": "Food", "k": 3}).json()
    timed = c.post("/recommend", json={"history": events, "domain": "Food", "k": 3}).json()
    assert timed["items"] == single["items"]
    batch = c.post("/recommend", json={"requests": [{"history": HISTORY, "domain": "Food", "k": 3},
                                                    {"history": [], "domain": "Kitchen", "k": 2}]})
    assert batch.status_code == 200, batch.text
    first, second = batch.json()["results"]
    assert first["items"] == single["items"]
    assert second["fallback"] == "popularity" and len(second["items"]) == 2


def test_unknown_ids_under_strict_are_a_404_that_lists_them(client):
    r = client("sasrec").post("/recommend", json={"history": ["F00001", "bad-1"], "domain": "Food", "strict": True})
    assert r.status_code == 404 and r.json()["unknown_items"] == ["bad-1"] and "bad-1" in r.json()["detail"]


def test_a_history_holding_every_item_of_the_domain_gets_an_empty_answer_over_http(client, recommender):
    kitchen = recommender("sasrec").item_ids("Kitchen")
    body = client("sasrec").post("/recommend", json={"history": kitchen, "domain": "Kitchen", "k": 3}).json()
    assert body["items"] == [] and body["fallback"] is None and body["history_used"] > 0


@pytest.mark.parametrize("field, value", [
    ("k", True), ("k", "5"), ("k", 2.5), ("explain", 0), ("exclude_seen", "yes"), ("strict", 1),
    ("history", [True]), ("history", [{"item": "F00001", "ts": "5"}]), ("history", [{"item": False, "ts": 1}]),
])
def test_request_types_are_strict_as_the_schema_says(client, field, value):
    body = {"history": HISTORY, "domain": "Food", "k": 3, field: value}
    r = client("sasrec").post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert all(e["loc"][:3] == ["body", "single", field] for e in r.json()["detail"]), r.text


def test_tema_explanations_come_through_http(client):
    r = client("tema").post("/recommend", json={"history": HISTORY, "domain": "Kitchen", "k": 2})
    assert r.status_code == 200, r.text
    assert all("modality_share" in i["explanation"] for i in r.json()["items"])


def test_items_health_metadata_and_openapi(client):
    c = client("sasrec")
    item = c.get("/items/K02003").json()
    assert item["domain"] == "Kitchen" and item["tags"] == [{"tag": "tea", "weight": 1.0}]
    assert c.get("/items/no-such-item").status_code == 404
    assert c.get("/health").json()["status"] == "ok"
    meta = c.get("/metadata").json()
    assert meta["model"] == "sasrec" and meta["protocol"]["negatives"] == 50 and "Food" in meta["test"]["full"]
    assert meta["limits"]["max_k"] == 50
    schema = c.get("/openapi.json").json()
    assert {"/recommend", "/items/{item_id}", "/health", "/metadata"} <= set(schema["paths"])


@pytest.mark.parametrize("body, status, hint", [
    ({"history": HISTORY, "domain": "Food", "k": 0}, 422, "greater than or equal to 1"),
    ({"history": HISTORY, "domain": "Food", "k": 10**6}, 422, "less than or equal to 50"),
    ({"history": HISTORY, "domain": "Food", "k": "ten"}, 422, "must be a JSON integer"),
    ({"history": HISTORY, "domain": "Garden"}, 422, "'Food' or 'Kitchen'"),
    ({"history": "F00001", "domain": "Food"}, 422, "valid list"),
    ({"history": [["F00001"]], "domain": "Food"}, 422, "history"),
    ({"history": [{"item": "F00001"}], "domain": "Food"}, 422, "ts"),
    ({"history": HISTORY}, 422, "domain"),
    ({"history": ["F00001"] * 201, "domain": "Food"}, 422, "at most 200"),
    ({"history": HISTORY, "domain": "Food", "colour": "red"}, 422, "Extra inputs"),
    ({"requests": []}, 422, "at least 1"),
    ({"requests": [{"history": [], "domain": "Food"}] * 9}, 422, "at most 8"),
    ([1, 2, 3], 422, "valid dictionary"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message(client, body, status, hint):
    r = client("sasrec").post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert hint in r.text


def test_malformed_json_is_a_422(client):
    r = client("sasrec").post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.text


def test_oversized_bodies_are_refused_with_413_by_length_and_when_streamed(client):
    c = client("sasrec")
    big = {"history": ["F00001"] * 20_000, "domain": "Food"}
    r = c.post("/recommend", json=big)
    assert r.status_code == 413 and "65,536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the middleware counts the streamed bytes
        yield b'{"history": ['
        for _ in range(2000):
            yield b'"F00001", ' * 10
        yield b'"F00001"], "domain": "Food"}'

    r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/recommend", content=b"{}", headers={"content-type": "application/json", "content-length": "abc"})
    assert r.status_code == 400


def test_serving_freezes_the_loaded_run_out_of_the_garbage_collector(recommender):
    """Full collections would walk the loaded run's objects on every pass (100-200 ms pauses with TEMA)."""
    import gc

    from fastapi.testclient import TestClient

    from temarec.serve.app import create_app

    gc.unfreeze()
    app = create_app(recommender("sasrec"))
    with TestClient(app) as c:
        assert gc.get_freeze_count() > 0  # the app, the model and the item tables are in the permanent generation
        assert c.post("/recommend", json={"history": [], "domain": app.state.recommender.domains[0]}).status_code == 200
    assert gc.get_freeze_count() == 0  # shut down: nothing stays frozen

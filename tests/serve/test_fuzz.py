"""Property-based fuzz of the request schema: whatever the body, the service answers 200 or a 4xx, never a 500."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KNOWN = ["F00001", "F01003", "K01002", "K02003", "KCOLD-tea"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
item_ids = st.one_of(st.sampled_from(KNOWN), st.text(max_size=10), st.integers(), json_values)
events = st.fixed_dictionaries({"item": item_ids, "ts": st.one_of(st.integers(), st.floats(), json_values)})
histories = st.one_of(st.lists(item_ids, max_size=12), st.lists(events, max_size=6), json_values)
fields = {"history": histories, "domain": st.one_of(st.sampled_from(["Food", "Kitchen", "food", ""]), json_values),
          "k": st.one_of(st.integers(min_value=-5, max_value=200), json_values),
          "exclude_seen": st.one_of(st.booleans(), json_values), "strict": st.one_of(st.booleans(), json_values),
          "explain": st.one_of(st.booleans(), json_values), "extra": json_values}
requests = st.fixed_dictionaries({}, optional=fields)
bodies = st.one_of(requests, st.fixed_dictionaries({"requests": st.lists(requests, max_size=4)}),
                   st.fixed_dictionaries({"requests": json_values}), json_values)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=bodies)
def test_no_request_body_gets_a_server_error(client, body):
    raw = json.dumps(body).encode()  # Python's json writes NaN/Infinity, which the server's parser also reads
    r = client("sasrec").post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 404, 413, 422), (r.status_code, r.text)
    if r.status_code == 200:
        results = r.json()["results"] if "results" in r.json() else [r.json()]
        for res in results:
            assert all(item["domain"] == res["domain"] for item in res["items"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item_id=st.text(min_size=1, max_size=30))
def test_item_lookup_never_fails_with_a_server_error(client, item_id):
    r = client("sasrec").get("/items/" + quote(item_id, safe=""))
    assert r.status_code in (200, 404), (r.status_code, r.text)


# a JSON value of every type but the one a field's schema allows: the service must refuse it (422), never coerce it
finite = st.floats(allow_nan=False, allow_infinity=False)
fractional = finite.filter(lambda x: not x.is_integer())
not_integer = st.one_of(st.booleans(), st.none(), st.text(max_size=6), fractional, st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_boolean = st.one_of(st.none(), st.integers(), finite, st.text(max_size=6), st.lists(st.booleans(), max_size=2))
not_item_id = st.one_of(st.booleans(), st.none(), fractional, st.lists(st.text(max_size=3), max_size=2))
not_number = st.one_of(st.booleans(), st.none(), st.text(max_size=6), st.lists(st.integers(), max_size=2))
WRONG_TYPES = {
    "k": not_integer,
    "exclude_seen": not_boolean, "strict": not_boolean, "explain": not_boolean,
    "domain": st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.just("Food"), max_size=2),
                        st.text(max_size=8).filter(lambda d: d not in ("Food", "Kitchen"))),
    "history": st.one_of(
        st.lists(st.sampled_from(KNOWN), max_size=3).flatmap(
            lambda ok: not_item_id.map(lambda bad: [*ok, bad])),
        st.lists(st.fixed_dictionaries({"item": st.sampled_from(KNOWN), "ts": st.integers()}), max_size=3).flatmap(
            lambda ok: st.one_of(not_number.map(lambda ts: {"item": "F00001", "ts": ts}),
                                 not_item_id.map(lambda item: {"item": item, "ts": 1})).map(lambda bad: [*ok, bad])),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6))),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(WRONG_TYPES)), data=st.data(), batch=st.booleans())
def test_a_value_of_the_wrong_json_type_is_refused_never_coerced(client, field, data, batch):
    """Strict request types (issue 17 #9): true is not 1, "5" is not 5, 0 is not false; the 422 names the field."""
    value = data.draw(WRONG_TYPES[field], label=field)
    request = {"history": ["F00001", "K01002"], "domain": "Food", "k": 3, field: value}
    body = {"requests": [request]} if batch else request
    r = client("sasrec").post("/recommend", json=body)
    assert r.status_code == 422, (r.status_code, r.text)
    locs = [e["loc"] for e in r.json()["detail"]]
    assert all(field in loc for loc in locs), locs

"""The HTTP contract, checked by an outside tester: schemathesis (``pip install schemathesis``, a dev extra) reads
the app's own OpenAPI schema, generates requests from it (valid ones and schema-violating ones) and checks every
answer: no 5xx, only documented status codes, schema-violating requests rejected, schema-valid ones accepted,
answers shaped as documented. It runs in-process against the ASGI app (loopback only, nothing listens)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")


def _run_schemathesis(app, max_examples: int) -> tuple[int, set[str], list[str]]:
    """(cases sent, operations tested, failures as 'operation: check: title\\ncurl') of one schemathesis run."""
    from schemathesis import engine
    from schemathesis.engine import Status, events

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(modes=["positive", "negative"], max_examples=max_examples)
    # a body over max_body_bytes is refused with the documented 413 whether or not it fits the schema (JSON Schema
    # cannot bound a body's size): a rejection for the negative check, an allowed answer for the positive one
    for check in (schema.config.checks.negative_data_rejection, schema.config.checks.positive_data_acceptance):
        check.expected_statuses = [*check.expected_statuses, "413"]
    cases, operations, failures = 0, set(), []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            operations.add(event.recorder.label)
            for checks in event.recorder.checks.values():
                failures += [f"{event.recorder.label}: {c.name}: {c.failure_info.failure.title}\n"
                             f"{c.failure_info.code_sample}" for c in checks if c.status == Status.FAILURE]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"schemathesis error: {event!r}")
    return cases, operations, failures


def test_the_service_keeps_its_openapi_contract_under_schemathesis(recommender):
    from temarec.serve.app import Limits, create_app

    app = create_app(recommender("sasrec"), limits=Limits(max_k=50, max_history=200, max_batch=8,
                                                          max_body_bytes=64 * 1024))
    cases, operations, failures = _run_schemathesis(app, max_examples=25)
    assert not failures, "\n\n".join(failures[:5])
    assert {"POST /recommend", "GET /items/{item_id}", "GET /health", "GET /metadata"} <= operations
    assert cases >= 100  # the generated cases, not a vacuous pass


def test_the_schema_documents_every_status_the_service_answers(client):
    paths = client("sasrec").get("/openapi.json").json()["paths"]
    assert {"200", "400", "404", "413", "422"} <= set(paths["/recommend"]["post"]["responses"])
    assert {"200", "400", "404", "413"} <= set(paths["/items/{item_id}"]["get"]["responses"])

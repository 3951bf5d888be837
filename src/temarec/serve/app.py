"""The HTTP service over a :class:`~temarec.serve.recommender.Recommender` (FastAPI; ``pip install 'temarec[serve]'``).

    POST /recommend        one request {"history", "domain", "k"} or a batch {"requests": [...]}
    GET  /items/{item_id}  title, domain, training interactions (+ tags when the dataset has them)
    GET  /health           {"status": "ok"} once the model is loaded
    GET  /metadata         model, data, protocol, tag source, test metrics of the run
    GET  /docs, /openapi.json

The model is loaded once, when the app is built. Bad input always gets a 4xx whose ``detail`` says what to fix,
and every status the service answers is in its OpenAPI schema:

    400  a Content-Length that is not an integer
    404  an unknown item: GET /items/{id}, or history ids the data does not know under ``"strict": true``
    413  a body over ``max_body_bytes``
    422  a body that fails validation: not JSON, wrong types, k outside 1..max_k, history too long, unknown domain

Request types are strict, as the schema says: ``k`` is a JSON integer (not ``true``, not ``"5"``), the flags
are ``true``/``false`` (not ``0``, not ``"yes"``), item ids are strings or integers (not ``true``) and
timestamps finite numbers.
Inference never runs on the event loop: requests are queued to a :class:`~temarec.serve.batching.MicroBatcher`,
which scores those arriving within a short window (``--batch-window-ms``) together, one forward pass per domain,
on one worker thread; ``/health``, ``/metadata`` and ``/items`` answer meanwhile.
"""

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Literal, Optional, Union

from temarec.extras import require
from temarec.serve.batching import BatchingConfig, MicroBatcher
from temarec.serve.recommender import Query as RecommendQuery
from temarec.serve.recommender import RecommendError, Recommender, UnknownItemsError, default_threads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every bound answers with a 4xx, never a 500."""

    max_k: int = 100
    max_history: int = 1000  # items per history (the model reads the most recent max_len of them)
    max_batch: int = 256  # histories per batch request
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_k", "max_history", "max_batch", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve limit {name} must be >= 1, got {getattr(self, name)}")


def _import_fastapi():
    require("fastapi", "serve", "the HTTP service")
    require("pydantic", "serve", "the HTTP service")


class BodyLimitMiddleware:
    """ASGI middleware: 413 for a body over ``max_bytes``, by its Content-Length or by the bytes streamed."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "Content-Length is not an integer"})
                return
            if size > self.max_bytes:
                await _send_json(send, 413, {"detail": self._message()})
                return
        received, started, refused = 0, False, False

        async def limited_receive() -> dict:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started and not refused:  # answer now: the app may turn the error below into a 400
                        refused = True
                        await _send_json(send, 413, {"detail": self._message()})
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out already; drop the app's answer to the aborted body
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            pass

    def _message(self) -> str:
        return f"request body over {self.max_bytes:,} bytes; send fewer or shorter histories"


class _BodyTooLarge(Exception):
    pass


async def _send_json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def create_app(recommender: Recommender | str | Path, limits: Limits | None = None, threads: int | None = None,
               batching: BatchingConfig | None = None):
    """The FastAPI app; ``recommender`` is a loaded Recommender or a run folder to load (once, here)."""
    _import_fastapi()
    from fastapi import Body, FastAPI, HTTPException, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictBool, StrictStr, Tag

    limits = limits or Limits()
    rec = recommender if isinstance(recommender, Recommender) else Recommender.load(recommender, threads=threads)
    DomainName = Literal[rec.domains]  # type: ignore[valid-type]  # OpenAPI lists the served domains

    # pydantic's lax mode would take true for 1, "5" for 5 and 0 for false: the schema says integer, number,
    # boolean, and so does validation (an integral float such as 5.0 is a JSON Schema integer and passes)
    Integer = Annotated[int, BeforeValidator(_json_integer)]
    Number = Annotated[float, BeforeValidator(_json_number), Field(allow_inf_nan=False)]
    ItemId = Annotated[Union[StrictStr, int], BeforeValidator(_item_id)]

    class Event(BaseModel):
        model_config = ConfigDict(extra="forbid")
        item: ItemId = Field(description="the data's item id")
        ts: Number = Field(description="timestamp; events are sorted by it (stable)")

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "examples": [{"history": ["item-1", "item-2"], "domain": rec.domains[1], "k": 10}]})
        history: Union[Annotated[list[ItemId], Field(max_length=limits.max_history)],
                       Annotated[list[Event], Field(max_length=limits.max_history)]] = Field(
            description=f"the data's item ids in time order, or [{{item, ts}}] events (sorted by ts); at most "
                        f"{limits.max_history} items; empty = popularity fallback")
        domain: DomainName = Field(description="domain to recommend from")  # type: ignore[valid-type]
        k: Integer = Field(10, ge=1, le=limits.max_k, description=f"number of items, 1..{limits.max_k}")
        exclude_seen: StrictBool = Field(True, description="leave out items already in the history")
        strict: StrictBool = Field(False, description="reject unknown item ids (404) instead of skipping them")
        explain: StrictBool = Field(True, description="attach explanations when the model gives them (TEMA)")

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        requests: list[RecommendRequest] = Field(min_length=1, max_length=limits.max_batch)

    class Recommended(BaseModel):
        item: str
        score: float
        title: str | None
        domain: str
        explanation: dict[str, Any] | None = None

    class RecommendResponse(BaseModel):
        domain: str
        items: list[Recommended]
        unknown_items: list[str] = Field(description="history ids this dataset does not know (skipped)")
        fallback: str | None = Field(description='"popularity" when the history held no known item')
        history_used: int

    class BatchResponse(BaseModel):
        results: list[RecommendResponse]

    class ErrorResponse(BaseModel):
        detail: Union[str, list[dict[str, Any]]] = Field(
            description="what is wrong and what to do; for a 422 from validation, one entry per problem "
                        "(loc, msg, type)")
        unknown_items: list[str] | None = Field(None, description="404 under strict: the unknown history ids")

    def _error(description: str) -> dict[str, Any]:
        return {"model": ErrorResponse, "description": description}

    every_route = {400: _error("Content-Length is not an integer"),
                   413: _error(f"request body over {limits.max_body_bytes:,} bytes")}

    def _kind(body: Any) -> str:
        return "batch" if isinstance(body, dict) and "requests" in body else "single"

    AnyRequest = Annotated[Union[Annotated[RecommendRequest, Tag("single")], Annotated[BatchRequest, Tag("batch")]],
                           Discriminator(_kind)]

    batcher = MicroBatcher(rec, batching)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The loaded run is ~200k long-lived Python objects (TEMA on C2DSR): every full collection walked them all,
        # a 100-200 ms pause of the event loop and the batcher a few times per 2,000 requests (the p99 tail of the
        # quiet load tests, docs/BENCHMARKS.md). Frozen, collections see only what requests allocate.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            batcher.close()
            gc.unfreeze()

    app = FastAPI(title="temarec", version="1", summary=f"{rec.model_name} recommendations on {rec.dataset_name}",
                  responses=every_route, lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.state.recommender, app.state.limits, app.state.batcher = rec, limits, batcher

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, and a NaN/inf in it would fail strict JSON (a 500)
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(RecommendError)
    async def _bad_request(request: Request, exc: RecommendError) -> JSONResponse:
        # an unknown item is a 404 wherever it is named: the schema cannot say which ids exist, so a request
        # that is valid by the schema gets "not found", not "invalid" (422)
        status = 404 if request.url.path.startswith("/items/") or isinstance(exc, UnknownItemsError) else 422
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, UnknownItemsError):
            body["unknown_items"] = exc.items
        return JSONResponse(body, status_code=status)

    def _history(req: RecommendRequest) -> list:
        return [(e.item, e.ts) for e in req.history] if req.history and isinstance(req.history[0], Event) \
            else req.history

    async def _answer(reqs: list[RecommendRequest]) -> list[dict[str, Any]]:
        """The requests' answers from the micro-batcher; the first bad one raises its RecommendError (a 4xx)."""
        answers = await batcher.answer([RecommendQuery(_history(r), r.domain, r.k, r.exclude_seen, r.strict,
                                                       r.explain) for r in reqs])
        for a in answers:
            if isinstance(a, RecommendError):
                raise a
        return [a.to_dict() for a in answers]  # type: ignore[union-attr]

    @app.post("/recommend", response_model=Union[RecommendResponse, BatchResponse],
              summary="top-k items of a domain for one history, or for a batch of them",
              responses={404: _error('"strict": true and the history names item ids the data does not know'),
                         422: _error("the body is not JSON, or fails the request schema")})
    async def recommend(body: Annotated[AnyRequest, Body()]) -> Response:
        if isinstance(body, BatchRequest):
            answer: dict[str, Any] = {"results": await _answer(body.requests)}
        else:
            answer = (await _answer([body]))[0]
        # the answer is built by our own code: serialise it directly instead of re-validating it per request
        # (response_model above still documents it in the OpenAPI schema)
        try:
            payload = json.dumps(answer, allow_nan=False, separators=(",", ":"))
        except ValueError:  # a NaN somewhere (a model's explanation, say): null it rather than fail the request
            payload = json.dumps(_finite(answer), allow_nan=False, separators=(",", ":"))
        return Response(payload, media_type="application/json")

    demo_page = (resources.files("temarec.serve") / "demo.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def demo() -> Response:
        """The demo page: search items, build a two-domain history, see the top-k with tags and modality shares."""
        return Response(demo_page, media_type="text/html; charset=utf-8")

    @app.get("/search", summary="items whose title or id contains q (case-insensitive), most trained-on first",
             responses={422: _error("a parameter fails its schema")})
    async def search(q: Annotated[str, Query(max_length=200, description="text to look for; empty = most popular")] = "",
                     domain: Annotated[Optional[DomainName], Query(description="only this domain")] = None,  # type: ignore[valid-type]
                     limit: Annotated[int, Query(ge=1, le=limits.max_k, description="at most this many items")] = 20
                     ) -> dict[str, Any]:
        return {"items": rec.search(q, domain, limit)}

    @app.get("/items/{item_id:path}", summary="one item of the catalogue",
             responses={404: _error("unknown item id"),
                        422: _error("the path fails validation (not expected: any string is an item id)")})
    async def item(item_id: str) -> dict[str, Any]:
        try:
            return rec.item(item_id)
        except UnknownItemsError:
            raise HTTPException(404, f"unknown item id {item_id!r}") from None

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": rec.model_name}

    @app.get("/metadata", summary="model, data, protocol, tag source and test metrics of the served run")
    async def metadata() -> dict[str, Any]:
        return _finite(rec.metadata() | {"limits": dataclasses.asdict(limits)})

    return app


def _json_integer(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be a JSON integer, not {json.dumps(value)}")
    return value


def _json_number(value: Any) -> Any:
    if isinstance(value, (bool, str)):
        raise ValueError(f"must be a JSON number, not {json.dumps(value)}")
    return value


def _item_id(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"item ids are strings or integers, not {json.dumps(value)}")
    return value


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so metrics always serialize as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


SERVE_ENV = "TEMAREC_SERVE"  # how `serve --workers N` hands its settings to the worker processes


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          threads: int | None = None, access_log: bool = False, batching: BatchingConfig | None = None,
          workers: int = 1) -> None:
    """Load ``run_dir`` once and serve it with uvicorn until interrupted.

    ``workers`` > 1 starts that many processes on the same port (uvicorn's), each loading the run once: each
    holds its own copy of the model and scores its own micro-batches.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    uvicorn = require("uvicorn", "serve", "the HTTP service")
    settings = {"run_dir": str(run_dir), "threads": threads or default_threads(),
                "limits": dataclasses.asdict(limits or Limits()), "batching": dataclasses.asdict(batching or
                                                                                            BatchingConfig())}
    log.info("serving on http://%s:%d (docs at /docs)", host, port)
    if workers == 1:
        uvicorn.run(_app_from_settings(settings), host=host, port=port, access_log=access_log, log_level="info")
        return
    os.environ[SERVE_ENV] = json.dumps(settings)  # the worker processes inherit it
    uvicorn.run("temarec.serve.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                access_log=access_log, log_level="info")


def app_from_env():
    """The app of one ``serve --workers N`` process, built from the settings ``serve`` put in the environment."""
    return _app_from_settings(json.loads(os.environ[SERVE_ENV]))


def _app_from_settings(settings: dict[str, Any]):
    return create_app(settings["run_dir"], limits=Limits(**settings["limits"]), threads=settings["threads"],
                      batching=BatchingConfig(**settings["batching"]))

"""HTTP JSON API over an index, modelled on infini-gram's: POST {"query_type": ..., "query": ...}.

`query` is text (tokenized here; for count, find_cnf and search_docs "a AND b OR c" is a CNF with
OR binding tighter than AND, each term matched as a word in running text, i.e. after a space) or
`query_ids` is a list of token ids (or, for CNF, a list of clauses of lists of ids). For prob and
infgram_prob the last token is the continuation. Every input is bounded (LIMITS); a bad request
gets 4xx and {"error": message}; shards that cannot answer (a Ray Serve replica that died) get 503.

One ASGI app (FastAPI, OpenAPI docs at /docs) serves a single process (`IndexServer`, on uvicorn)
and the Ray Serve front (indexes/serve_ray.py), which passes an engine that fans out over replicas.
"""

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from indexes.attribution import attribute
from indexes.engine import Engine, QueryError
from indexes.options import QUERY_TYPES
from indexes.phrases import TEXT_QUERIES

OPTION_LIMITS = {  # request options and their largest values (all integers >= 1)
    "max_support": 1000,
    "max_clause_freq": 500000,
    "max_diff_tokens": 1000,
    "maxnum": 10,
    "max_disp_len": 10000,
    "min_tokens": 1000,
}
LIMITS = {
    "body_bytes": 65536,
    "query_chars": 1000,
    "query_tokens": 500,
    "clauses": 4,
    "terms_per_clause": 4,
    **OPTION_LIMITS,
}
BACKLOG = 2048  # pending connections the listening socket holds (http.server's 5 overflowed at 100 clients)

Handler = Callable[[Engine, list, dict], dict]
# How each query type is answered: (engine, token ids, bounded options) -> result. A new engine
# query type is one line in one of these tables (and its name in indexes/options.QUERY_TYPES).
NGRAM_QUERIES: dict[str, Handler] = {
    "count": lambda e, ids, o: e.count(ids),
    "find": lambda e, ids, o: e.find(ids),
    "search_docs": lambda e, ids, o: e.search_docs(ids, o.get("maxnum"), o.get("max_disp_len")),
    "prob": lambda e, ids, o: e.prob(*_continuation(ids, "prob")),
    "infgram_prob": lambda e, ids, o: e.infgram_prob(*_continuation(ids, "infgram_prob")),
    "ntd": lambda e, ids, o: e.ntd(ids, o.get("max_support")),
    "infgram_ntd": lambda e, ids, o: e.infgram_ntd(ids, o.get("max_support")),
}
# CNF forms (several terms, or find_cnf always): (engine, clauses of lists of ids, options) -> result
CNF_QUERIES: dict[str, Handler] = {
    "count": lambda e, cnf, o: e.count_cnf(cnf, o.get("max_clause_freq"), o.get("max_diff_tokens")),
    "find_cnf": lambda e, cnf, o: e.find_cnf(cnf, o.get("max_clause_freq"), o.get("max_diff_tokens")),
    "search_docs": lambda e, cnf, o: e.search_docs_cnf(
        cnf, o.get("maxnum"), o.get("max_disp_len"), o.get("max_clause_freq"), o.get("max_diff_tokens")
    ),
}
# Documents by position: (engine, the request, options) -> one document
DOC_QUERIES: dict[str, Handler] = {
    "get_doc_by_rank": lambda e, r, o: e.get_doc_by_rank(_int(r, "s"), _int(r, "rank"), o.get("max_disp_len")),
    "get_doc_by_ptr": lambda e, r, o: e.get_doc_by_ptr(_int(r, "s"), _int(r, "ptr"), o.get("max_disp_len")),
}


class ShardsUnavailable(RuntimeError):
    """Some shards could not answer (their replica died or is restarting): the client gets 503."""


def answer(engine: Engine, request: dict) -> dict:
    """One request dict in, one result dict out (with token_ids, tokens and latency in ms)."""
    t0 = time.perf_counter()
    if not isinstance(request, dict):
        raise QueryError("the request must be a JSON object")
    query_type = request.get("query_type")
    if not isinstance(query_type, str) or query_type not in QUERY_TYPES:
        raise QueryError(f"query_type must be one of {', '.join(QUERY_TYPES)}")
    opts = {name: _bounded(request, name) for name in OPTION_LIMITS if name in request}

    if query_type in DOC_QUERIES:
        return _with_text(engine, DOC_QUERIES[query_type](engine, request, opts)) | {"latency": _ms(t0)}
    if query_type == "attribute":
        if not isinstance(request.get("query"), str) or len(request["query"]) > LIMITS["query_chars"]:
            raise QueryError(f"attribute needs `query`: a text of at most {LIMITS['query_chars']} characters")
        text, options = request["query"], (opts.get(n) for n in ("min_tokens", "maxnum", "max_disp_len"))
        return attribute(engine, text, *options) | {"latency": _ms(t0)}
    if query_type in TEXT_QUERIES and _is_phrase(request):
        # text is a phrase of words (indexes/phrases.py); token ids keep their exact meaning
        result = TEXT_QUERIES[query_type](engine, request["query"], opts)
        if "documents" in result:
            result["documents"] = [_with_text(engine, doc) for doc in result["documents"]]
        ids = engine.tokenize(" " + request["query"].strip())
        return result | {"token_ids": ids, "tokens": _pieces(engine, ids), "latency": _ms(t0)}
    cnf = _query_cnf(engine, request) if query_type in CNF_QUERIES else None
    if cnf is not None and (len(cnf) > 1 or len(cnf[0]) > 1 or query_type not in NGRAM_QUERIES):
        ids, result = cnf, CNF_QUERIES[query_type](engine, cnf, opts)
    else:
        ids = cnf[0][0] if cnf is not None else _query_ids(engine, request)
        result = NGRAM_QUERIES[query_type](engine, ids, opts)
    if "documents" in result:
        result["documents"] = [_with_text(engine, doc) for doc in result["documents"]]
    return result | {"token_ids": ids, "tokens": _pieces(engine, ids), "latency": _ms(t0)}


def _is_phrase(request: dict) -> bool:
    """A text query that is not a CNF ("a AND b OR c")."""
    text = request.get("query")
    if "query_ids" in request or not isinstance(text, str) or " AND " in text or " OR " in text:
        return False
    if len(text) > LIMITS["query_chars"]:
        raise QueryError(f"query is longer than {LIMITS['query_chars']} characters")
    return True


def _continuation(ids: list[int], query_type: str) -> tuple[list[int], int]:
    if not ids:
        raise QueryError(f"{query_type} needs at least one token: the last one is the continuation")
    return ids[:-1], ids[-1]


def _query_ids(engine: Engine, request: dict) -> list[int]:
    if "query_ids" in request:
        ids = request["query_ids"]
        if not isinstance(ids, list):
            raise QueryError("query_ids must be a list of token ids")
    elif "query" in request:
        text = request["query"]
        if not isinstance(text, str):
            raise QueryError("query must be a string")
        if len(text) > LIMITS["query_chars"]:
            raise QueryError(f"query is longer than {LIMITS['query_chars']} characters")
        ids = engine.tokenize(text)
    else:
        raise QueryError("the request needs `query` (text) or `query_ids` (token ids)")
    if len(ids) > LIMITS["query_tokens"]:
        raise QueryError(f"the query has more than {LIMITS['query_tokens']} tokens")
    return ids


def _query_cnf(engine: Engine, request: dict) -> list[list[list[int]]]:
    """A CNF from "a OR b AND c" text or nested ids; a plain n-gram becomes [[ids]]."""
    if (
        "query_ids" in request
        and isinstance(request["query_ids"], list)
        and any(isinstance(x, list) for x in request["query_ids"])
    ):
        cnf = request["query_ids"]
        if not all(isinstance(c, list) and all(isinstance(t, list) for t in c) for c in cnf):
            raise QueryError("query_ids for a CNF must be a list of clauses, each a list of lists of token ids")
    elif isinstance(request.get("query"), str) and (" AND " in request["query"] or " OR " in request["query"]):
        if len(request["query"]) > LIMITS["query_chars"]:
            raise QueryError(f"query is longer than {LIMITS['query_chars']} characters")
        # Terms are matched as words inside running text, so each gets the leading space BPE sees there.
        cnf = [
            [engine.tokenize(" " + term.strip()) for term in clause.split(" OR ")]
            for clause in request["query"].split(" AND ")
        ]
    else:
        return [[_query_ids(engine, request)]]
    if not cnf or len(cnf) > LIMITS["clauses"] or any(not c or len(c) > LIMITS["terms_per_clause"] for c in cnf):
        raise QueryError(
            f"a CNF query takes 1 to {LIMITS['clauses']} clauses of 1 to {LIMITS['terms_per_clause']} terms"
        )
    if any(not term or len(term) > LIMITS["query_tokens"] for c in cnf for term in c):
        raise QueryError(f"every CNF term needs 1 to {LIMITS['query_tokens']} tokens")
    return cnf


def _bounded(request: dict, name: str) -> int:
    value = request[name]
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= LIMITS[name]):
        raise QueryError(f"{name} must be an integer from 1 to {LIMITS[name]}")
    return value


def _int(request: dict, name: str) -> int:
    value = request.get(name)
    if not (isinstance(value, int) and not isinstance(value, bool)):
        raise QueryError(f"{name} must be an integer")
    return value


def _pieces(engine: Engine, ids) -> list:
    if engine.tokenizer is None or not ids or not isinstance(ids[0], int):
        return []
    return [engine.tokenizer.id_to_token(i) for i in ids]


def _with_text(engine: Engine, doc: dict) -> dict:
    if engine.tokenizer is None:
        return doc
    return doc | {"text": engine.detokenize(doc["token_ids"])}


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def warm_up(engine: Engine) -> None:
    """Load the compiled search loops now, not on the first request."""
    for query_type in ("count", "ntd", "infgram_prob", "get_doc_by_rank"):
        answer(engine, {"query_type": query_type, "query_ids": [0], "s": 0, "rank": 0})


# -- the ASGI app -----------------------------------------------------------------------------------

_REQUEST_SCHEMA = {  # for the OpenAPI docs only: the body is parsed and checked by `answer`
    "type": "object",
    "required": ["query_type"],
    "properties": {
        "query_type": {"type": "string", "enum": list(QUERY_TYPES)},
        "query": {"type": "string", "maxLength": LIMITS["query_chars"], "description": "text; 'a AND b OR c' is a CNF"},
        "query_ids": {
            "type": "array",
            "description": "token ids, or for a CNF a list of clauses of lists of token ids",
            "items": {},
        },
        **{name: {"type": "integer", "minimum": 1, "maximum": top} for name, top in OPTION_LIMITS.items()},
        "s": {"type": "integer", "description": "shard (get_doc_by_rank, get_doc_by_ptr)"},
        "rank": {"type": "integer", "description": "suffix-array rank in shard s (get_doc_by_rank)"},
        "ptr": {"type": "integer", "description": "byte offset in shard s (get_doc_by_ptr)"},
    },
}


def make_app(engine: Engine):
    """The JSON API as a FastAPI app: GET / (the index card and limits), POST / (a query), /docs.
    FastAPI is imported here, so that `curate index query` (which uses `answer`) starts without it;
    the routes' annotations are evaluated at definition (no `from __future__ import annotations`
    in this module), which is how FastAPI finds `Request`."""
    from fastapi import FastAPI, Request, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title="curate index", summary="infini-gram style queries over a curate index")

    def reply(status: int, payload: dict) -> Response:
        # json.dumps, not JSONResponse: the engine's float answers stay as Python writes them
        return Response(json.dumps(payload, ensure_ascii=False), status_code=status, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return reply(error.status_code, {"error": f"{error.detail}: {request.method} {request.url.path}"})

    @app.get("/", summary="the index card, the query types and the limits")
    @app.get("/info", include_in_schema=False)
    async def info() -> Response:
        return reply(200, {"index": str(engine.index_dir), **engine.card, "query_types": QUERY_TYPES, "limits": LIMITS})

    @app.post(
        "/",
        summary="answer one query",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}},
    )
    @app.post("/query", include_in_schema=False)
    async def query(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > LIMITS["body_bytes"]:
            return reply(413, {"error": f"the body is larger than {LIMITS['body_bytes']} bytes"})
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > LIMITS["body_bytes"]:
                return reply(413, {"error": f"the body is larger than {LIMITS['body_bytes']} bytes"})
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            return reply(400, {"error": f"the body is not JSON: {e}"})
        try:
            return reply(200, await run_in_threadpool(answer, engine, parsed))
        except QueryError as e:
            return reply(400, {"error": str(e)})
        except ShardsUnavailable as e:
            return reply(503, {"error": str(e)})
        except Exception as e:  # a bug: say so, keep serving
            return reply(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    return app


class IndexServer:
    """The app on uvicorn in this process, on a socket bound at construction (port 0 picks a free one)."""

    def __init__(self, index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000):
        import uvicorn

        engine = Engine(index_dir)
        warm_up(engine)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self.socket = socket.create_server((host, port), family=family, backlog=BACKLOG)
        self.host, self.port = self.socket.getsockname()[:2]
        config = uvicorn.Config(make_app(engine), backlog=BACKLOG, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (SIGINT or SIGTERM when on the main thread) or `stop()`."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> "IndexServer":
        """Serve from a background thread (tests, benchmarks); returns once it accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

"""HTTP JSON API over an index, modelled on infini-gram's: POST {"query_type": ..., "query": ...}.

`query` is text (tokenized here; for count, find_cnf and search_docs "a AND b OR c" is a CNF with
OR binding tighter than AND, each term matched as a word in running text, i.e. after a space) or
`query_ids` is a list of token ids (or, for CNF, a list of clauses of lists of ids). For prob and
infgram_prob the last token is the continuation. Every input is bounded (LIMITS); a bad request
gets 4xx and {"error": message}.
"""

from __future__ import annotations

import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from indexes.engine import Engine, QueryError
from indexes.options import QUERY_TYPES

LIMITS = {
    "body_bytes": 65536,
    "query_chars": 1000,
    "query_tokens": 500,
    "clauses": 4,
    "terms_per_clause": 4,
    "max_support": 1000,
    "max_clause_freq": 500000,
    "max_diff_tokens": 1000,
    "maxnum": 10,
    "max_disp_len": 10000,
}
CNF_TYPES = ("count", "find_cnf", "search_docs")


def answer(engine: Engine, request: dict) -> dict:
    """One request dict in, one result dict out (with token_ids, tokens and latency in ms)."""
    t0 = time.perf_counter()
    if not isinstance(request, dict):
        raise QueryError("the request must be a JSON object")
    query_type = request.get("query_type")
    if query_type not in QUERY_TYPES:
        raise QueryError(f"query_type must be one of {', '.join(QUERY_TYPES)}")
    opts = {
        name: _bounded(request, name)
        for name in ("max_support", "max_clause_freq", "max_diff_tokens", "maxnum", "max_disp_len")
        if name in request
    }

    if query_type in ("get_doc_by_rank", "get_doc_by_ptr"):
        s, position = _int(request, "s"), _int(request, "rank" if query_type == "get_doc_by_rank" else "ptr")
        result = getattr(engine, query_type)(s, position, opts.get("max_disp_len"))
        return _with_text(engine, result) | {"latency": _ms(t0)}

    cnf = _query_cnf(engine, request) if query_type in CNF_TYPES else None
    if cnf is not None and (len(cnf) > 1 or len(cnf[0]) > 1 or query_type == "find_cnf"):
        if query_type == "count":
            result = engine.count_cnf(cnf, opts.get("max_clause_freq"), opts.get("max_diff_tokens"))
        elif query_type == "find_cnf":
            result = engine.find_cnf(cnf, opts.get("max_clause_freq"), opts.get("max_diff_tokens"))
        else:
            result = engine.search_docs_cnf(
                cnf,
                opts.get("maxnum"),
                opts.get("max_disp_len"),
                opts.get("max_clause_freq"),
                opts.get("max_diff_tokens"),
            )
        ids = cnf
    else:
        ids = cnf[0][0] if cnf is not None else _query_ids(engine, request)
        if query_type == "count":
            result = engine.count(ids)
        elif query_type == "find":
            result = engine.find(ids)
        elif query_type == "search_docs":
            result = engine.search_docs(ids, opts.get("maxnum"), opts.get("max_disp_len"))
        elif query_type in ("prob", "infgram_prob"):
            if not ids:
                raise QueryError(f"{query_type} needs at least one token: the last one is the continuation")
            result = getattr(engine, query_type)(ids[:-1], ids[-1])
        else:  # ntd, infgram_ntd
            result = getattr(engine, query_type)(ids, opts.get("max_support"))
    if "documents" in result:
        result["documents"] = [_with_text(engine, doc) for doc in result["documents"]]
    return result | {"token_ids": ids, "tokens": _pieces(engine, ids), "latency": _ms(t0)}


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


class _Handler(BaseHTTPRequestHandler):
    engine: Engine  # set by make_server

    def do_GET(self) -> None:
        if self.path not in ("/", "/info"):
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}; POST queries to /"})
        self._send(
            HTTPStatus.OK,
            {"index": str(self.engine.index_dir), **self.engine.card, "query_types": QUERY_TYPES, "limits": LIMITS},
        )

    def do_POST(self) -> None:
        if self.path not in ("/", "/query"):
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}; POST queries to /"})
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._send(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
        if int(length) > LIMITS["body_bytes"]:
            return self._send(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"the body is larger than {LIMITS['body_bytes']} bytes"}
            )
        body = self.rfile.read(int(length))
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {e}"})
        try:
            result = answer(self.engine, request)
        except QueryError as e:
            return self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # a bug: say so, keep serving
            return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}: {e}"})
        self._send(HTTPStatus.OK, result)

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request is noise here
        pass


def make_server(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A threaded server (port 0 picks a free one); call serve_forever() on it."""
    engine = Engine(index_dir)
    for query_type in (
        "count",
        "ntd",
        "infgram_prob",
        "get_doc_by_rank",
    ):  # load the compiled search loops now, not on the first request
        answer(engine, {"query_type": query_type, "query_ids": [0], "s": 0, "rank": 0})
    handler = type("IndexHandler", (_Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server

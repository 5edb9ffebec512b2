"""The user's path: `curate tokenizer train`, `curate index build|query|contamination|dedup`, and the
HTTP API (answers equal the engine's, bad input gets 4xx, fuzzed input never gets 5xx, concurrent
clients are served, clients that hang up leave no traceback, `curate index serve` as a process)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from curate.cli import main
from curate.documents import read_texts
from indexes import phrases
from indexes.engine import Engine
from indexes.server import BACKLOG, QUERY_TYPES, IndexServer, answer
from tests.index_support import DATA, official_engine


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert (
        main(["tokenizer", "train", "--input", str(DATA / "wiki"), "--out", str(root / "tok.json"), "--vocab", "3000"])
        == 0
    )
    assert (
        main(
            [
                "index",
                "build",
                "--input",
                str(DATA / "wiki"),
                "--tokenizer",
                str(root / "tok.json"),
                "--out",
                str(root / "ix"),
                "--shard-tokens",
                "300000",
            ]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def server(built):
    srv = IndexServer(built / "ix", "127.0.0.1", 0).start()
    yield srv.url
    srv.stop()


def _decode(built, token_ids: list[int]) -> str:
    return Tokenizer.from_file(str(built / "tok.json")).decode(token_ids)


@functools.cache
def _sources() -> dict[str, str]:
    return {d["id"]: d["text"] for d in read_texts([str(DATA / "wiki")])}


def _official(built):
    return official_engine(built / "ix", json.loads((built / "ix" / "index.json").read_text())["eos_token_id"])


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _query(url: str, **request) -> tuple[int, dict]:
    return _post(url, json.dumps(request).encode())


def test_build_writes_shards_and_card(built):
    card = json.loads((built / "ix" / "index.json").read_text())
    assert card["shards"] >= 2 and card["vocab_size"] == 3000 and card["token_width"] == 2
    assert (built / "ix" / "tokenizer.json").is_file()
    for s in range(card["shards"]):
        for kind in ("tokenized", "offset", "metadata", "metaoff", "table"):
            assert (built / "ix" / f"{kind}.{s}").stat().st_size > 0


def test_build_with_either_sorter_gives_the_same_tables(built, tmp_path):
    assert json.loads((built / "ix" / "index.json").read_text())["sorter"] == "libsais"  # auto, built by make setup
    argv = [
        "index",
        "build",
        "--input",
        str(DATA / "wiki"),
        "--tokenizer",
        str(built / "tok.json"),
        "--out",
        str(tmp_path / "ix"),
        "--shard-tokens",
        "300000",
    ]
    assert main([*argv, "--sorter", "pydivsufsort"]) == 0
    card = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert card["sorter"] == "pydivsufsort"
    for s in range(card["shards"]):
        assert (tmp_path / "ix" / f"table.{s}").read_bytes() == (built / "ix" / f"table.{s}").read_bytes()


def test_cli_query_prints_engine_answers(built, capsys):
    engine = Engine(built / "ix")
    ids = engine.tokenize(" the first")
    assert main(["index", "query", str(built / "ix"), "count", " the first"]) == 0
    out = json.loads(capsys.readouterr().out)
    # text is a phrase (indexes/phrases.py): its running-text spelling plus line and document starts
    assert out["count"] == phrases.count(engine, "the first")["count"] >= engine.count(ids)["count"] > 0
    assert out["token_ids"] == ids
    assert main(["index", "query", str(built / "ix"), "prob", json.dumps(ids), "--ids"]) == 0
    assert json.loads(capsys.readouterr().out)["prob"] == engine.prob(ids[:-1], ids[-1])["prob"]
    assert main(["index", "query", str(built / "ix"), "search_docs", "river AND bridge", "--maxnum", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["cnt"] == _official(built).count_cnf([[engine.tokenize(" river")], [engine.tokenize(" bridge")]])["count"]
    )
    assert out["cnt"] > 0 and len(out["documents"]) == 2
    for doc in out["documents"]:  # each a window of a real document holding both terms (brute force)
        tokens = doc["token_ids"]
        for term in (" river", " bridge"):
            ids = engine.tokenize(term)
            assert any(tokens[i : i + len(ids)] == ids for i in range(len(tokens))), term
        assert (
            doc["text"] == _decode(built, tokens)
            and doc["text"] in _sources()[json.loads(doc["metadata"])["metadata"]["id"]]
        )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "query", "/nonexistent/ix", "count", "x"], "does not exist"),
        (["index", "query", "{ix}", "prob", "[1, -5, 2]", "--ids"], "token ids"),
        (["index", "query", "{ix}", "prob", "not json", "--ids"], "JSON list"),
        (["index", "query", "{ix}", "ntd", "x", "--max-support", "0"], "max_support"),
        (["index", "query", "{ix}", "get_doc_by_rank", "--s", "0", "--rank", "-1"], "rank"),
        (["index", "build", "--input", "/nonexistent", "--tokenizer", "{tok}", "--out", "{tmp}/x"], "no such file"),
        (
            ["index", "build", "--input", "{data}", "--tokenizer", "/nonexistent.json", "--out", "{tmp}/x"],
            "does not exist",
        ),
        (["index", "build", "--input", "{data}", "--tokenizer", "{tok}", "--out", "{ix}"], "already exists"),
        (["tokenizer", "train", "--input", "{data}", "--out", "{tmp}/t.json", "--vocab", "10"], "at least 257"),
    ],
)
def test_cli_bad_input_gets_a_clear_error(built, tmp_path, capsys, argv, message):
    argv = [a.format(ix=built / "ix", tok=built / "tok.json", tmp=tmp_path, data=DATA / "wiki") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("curate: error:") and message in err


def test_cli_contamination_and_dedup(built, tmp_path, capsys):
    evals = tmp_path / "eval.jsonl"
    engine = Engine(built / "ix")
    corpus_doc = engine.detokenize(engine.get_doc_by_ix(3, 400)["token_ids"])
    evals.write_text(
        json.dumps({"id": "copied", "text": corpus_doc})
        + "\n"
        + json.dumps({"id": "fresh", "text": "Zebra quantum marmalade xylophone " * 5})
        + "\n"
    )
    assert main(["index", "contamination", str(built / "ix"), str(evals)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["id"] == "copied" and rows[0]["ngram_found_fraction"] == 1.0
    assert rows[1]["ngram_found_fraction"] < 0.5
    assert main(["index", "dedup", str(built / "ix"), "--min-tokens", "20"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == engine.get_total_doc_cnt()


def test_http_answers_match_the_engine(built, server):
    engine = Engine(built / "ix")
    ids = engine.tokenize(" the first time")
    status, out = _query(server, query_type="count", query=" the first time")
    assert (
        status == 200
        and out["count"] == phrases.count(engine, "the first time")["count"] >= engine.count(ids)["count"]
        and out["token_ids"] == ids
        and out["latency"] >= 0
    )
    status, out = _query(server, query_type="ntd", query_ids=ids[:-1], max_support=10)
    assert (
        status == 200
        and {int(k): v for k, v in out["result_by_token_id"].items()} == engine.ntd(ids[:-1], 10)["result_by_token_id"]
    )
    status, out = _query(server, query_type="infgram_prob", query_ids=ids)
    assert status == 200 and out["suffix_len"] == engine.infgram_prob(ids[:-1], ids[-1])["suffix_len"]
    status, out = _query(server, query_type="find", query_ids=ids)
    assert status == 200 and out["cnt"] == engine.find(ids)["cnt"]
    status, out = _query(server, query_type="get_doc_by_rank", s=0, rank=5, max_disp_len=20)
    doc = engine.get_doc_by_rank(0, 5, 20)
    text = _decode(built, doc["token_ids"])  # the tokenizer's own decoding, a piece of the source document
    assert status == 200 and out == {**doc, "text": text, "latency": out["latency"]}
    assert len(text) > 20 and text in _sources()[json.loads(doc["metadata"])["metadata"]["id"]]
    status, out = _query(server, query_type="count", query="river OR lake AND bridge")
    assert status == 200 and out["approx"] is False and out["count"] > 0


@pytest.mark.parametrize(
    "request_body, status",
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (json.dumps({"query_type": "nope", "query": "x"}).encode(), 400),
        (json.dumps({"query_type": "count"}).encode(), 400),
        (json.dumps({"query_type": "count", "query": "x" * 5000}).encode(), 400),
        (json.dumps({"query_type": "count", "query_ids": list(range(600))}).encode(), 400),
        (json.dumps({"query_type": "ntd", "query": "x", "max_support": 10**6}).encode(), 400),
        (json.dumps({"query_type": "search_docs", "query": "a AND b AND c AND d AND e"}).encode(), 400),
        (json.dumps({"query_type": "get_doc_by_ptr", "s": 0, "ptr": 1}).encode(), 400),
        (json.dumps({"query_type": "count", "query": "x" * 70000}).encode(), 413),
    ],
)
def test_http_bad_input_gets_4xx_with_a_message(server, request_body, status):
    code, out = _post(server, request_body)
    assert code == status and out["error"]


def test_http_serves_concurrent_clients(built, server):
    engine = Engine(built / "ix")
    words = [" the", " river", " city", " war", " first", " of the", " in the", " and"]
    expected = {w: answer(engine, {"query_type": "count", "query": w})["count"] for w in words}
    with ThreadPoolExecutor(max_workers=100) as pool:  # 100 clients at once, 400 requests
        results = list(pool.map(lambda w: (w, _query(server, query_type="count", query=w)), words * 50))
    for word, (status, out) in results:
        assert status == 200 and out["count"] == expected[word]


def test_http_serves_openapi_docs_and_json_errors(server):
    with urllib.request.urlopen(server + "openapi.json", timeout=30) as response:
        spec = json.loads(response.read())
    body = spec["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["query_type"]["enum"] == list(QUERY_TYPES)
    with urllib.request.urlopen(server + "docs", timeout=30) as response:
        assert response.status == 200 and b"swagger" in response.read().lower()
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(server + "nope", timeout=30)
    assert error.value.code == 404 and "/nope" in json.loads(error.value.read())["error"]
    with urllib.request.urlopen(server, timeout=30) as response:
        info = json.loads(response.read())
    assert info["limits"]["body_bytes"] == 65536 and info["query_types"] == list(QUERY_TYPES)


def test_http_clients_that_hang_up_leave_no_traceback(server, capfd):
    host, port = server.removeprefix("http://").rstrip("/").split(":")
    body = json.dumps({"query_type": "search_docs", "query": " the", "maxnum": 10, "max_disp_len": 10000}).encode()
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    for cut in (len(head) // 2, len(head) + 3, None):  # mid-header, mid-body, before reading the answer
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall((head.encode() + body)[: cut if cut is None else cut])
    status, out = _query(server, query_type="count", query=" the")
    assert status == 200 and out["count"] > 0
    time.sleep(0.5)  # let the server notice the hang-ups before looking at what it wrote
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen) -> None:
    """Until the server answers (its start-up loads numba and the tokenizer), or it exits."""
    while process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")


def test_cli_serve_runs_as_a_process_and_answers(built):
    engine = Engine(built / "ix")
    port = _free_port()
    curate = os.path.join(os.path.dirname(sys.executable), "curate")
    process = subprocess.Popen(
        [curate, "index", "serve", str(built / "ix"), "--host", "127.0.0.1", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, process)
        status, out = _query(url, query_type="count", query=" the river")
        assert (
            status == 200
            and out["count"] == answer(engine, {"query_type": "count", "query": " the river"})["count"] > 0
        )
        status, out = _query(url, query_type="ntd", query=" the", max_support=10**6)
        assert status == 400 and "max_support" in out["error"]
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and f"http://127.0.0.1:{port}/" in err and "Traceback" not in err


@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2) to read the listen queue")
def test_listen_backlog_is_large(server):
    """http.server's backlog of 5 overflowed under 100 clients; `ss` shows a listener's backlog as Send-Q."""
    port = server.removeprefix("http://").rstrip("/").split(":")[1]
    line = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    assert int(line.split()[2]) == min(BACKLOG, somaxconn) > 5


_ids = st.lists(
    st.one_of(
        st.integers(-5, 70000), st.just(2**64), st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.none()
    ),
    max_size=8,
)
_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "query_type": st.one_of(st.sampled_from(QUERY_TYPES), st.text(max_size=10), _json_value),
        "query": st.one_of(
            st.text(max_size=60), st.sampled_from(["a AND b", "x OR y AND z", " AND ", "OR", " OR  OR "]), _json_value
        ),
        "query_ids": st.one_of(_ids, st.lists(st.lists(_ids, max_size=3), max_size=3), _json_value),
        "maxnum": st.one_of(st.integers(-3, 20), _json_value),
        "max_disp_len": st.one_of(st.integers(-3, 20000), _json_value),
        "max_support": st.one_of(st.integers(-3, 2000), _json_value),
        "max_clause_freq": st.one_of(st.integers(-3, 10**6), _json_value),
        "max_diff_tokens": st.one_of(st.integers(-3, 2000), _json_value),
        "s": st.one_of(st.integers(-2, 5), _json_value),
        "rank": st.one_of(st.integers(-2, 10**7), _json_value),
        "ptr": st.one_of(st.integers(-2, 10**7), _json_value),
    },
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(request=st.one_of(_request, _json_value))
def test_http_fuzzed_requests_never_get_5xx(server, request):
    status, out = (
        _query(server, **request) if isinstance(request, dict) else _post(server, json.dumps(request).encode())
    )
    assert status in (200, 400), out
    assert status == 200 or out["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_http_fuzzed_bytes_never_get_5xx(server, body):
    status, out = _post(server, body)
    assert status in (200, 400)

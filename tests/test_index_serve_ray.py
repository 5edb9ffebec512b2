"""`curate index serve --ray`: Ray Serve on the local Ray, 2 replicas over a 4-shard index. Every query
type answers as the single-process engine does (sampled ntd included: the groups sample with the
global unit); killing a replica mid-run gives errors, never wrong answers, and Serve restarts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from curate.cli import main
from indexes.engine import Engine
from indexes.server import answer
from tests.index_support import DATA

pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    argv = ["tokenizer", "train", "--input", str(DATA / "wiki"), "--out", str(root / "tok.json"), "--vocab", "3000"]
    assert main(argv) == 0
    argv = ["index", "build", "--input", str(DATA / "wiki"), "--tokenizer", str(root / "tok.json")]
    assert main([*argv, "--out", str(root / "ix"), "--shard-tokens", "180000"]) == 0
    assert json.loads((root / "ix" / "index.json").read_text())["shards"] == 4
    return root / "ix"


@pytest.fixture(scope="module")
def served(index):
    from ray import serve

    from curate.ray_runtime import init_ray
    from indexes.serve_ray import APP_NAME, deploy

    init_ray()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = deploy(index, "127.0.0.1", port, replicas=2)
    yield url
    serve.delete(APP_NAME)
    serve.shutdown()


def _query(url: str, request: dict) -> tuple[int, dict]:
    body = urllib.request.Request(url, data=json.dumps(request).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(body, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _expected(engine: Engine, request: dict) -> tuple[int, dict]:
    """What the single-process server answers, through JSON as the client sees it."""
    try:
        return 200, json.loads(json.dumps(answer(engine, request)))
    except ValueError as e:
        return 400, {"error": str(e)}


def _requests(engine: Engine) -> list[dict]:
    ids = engine.tokenize(" the first time")
    common = engine.tokenize(" the")
    last = len(engine.shards) - 1
    return [
        {"query_type": "count", "query_ids": ids},
        {"query_type": "count", "query_ids": []},
        {"query_type": "count", "query": "river OR lake AND bridge"},
        {"query_type": "find", "query_ids": ids},
        {"query_type": "find", "query_ids": common},
        {"query_type": "prob", "query_ids": ids},
        {"query_type": "prob", "query_ids": [7, 7, 7, 7, 7]},
        {"query_type": "ntd", "query_ids": ids[:-1]},
        {"query_type": "ntd", "query_ids": common, "max_support": 10},  # sampled: approx, unit from the global count
        {"query_type": "infgram_prob", "query_ids": [2999, 5, *ids]},
        {"query_type": "infgram_ntd", "query_ids": [2999, *ids[:2]], "max_support": 50},
        {"query_type": "find_cnf", "query": "river AND bridge", "max_diff_tokens": 50},
        {"query_type": "count", "query": "the AND of", "max_clause_freq": 1000},  # subsampled clauses: approx
        {"query_type": "get_doc_by_rank", "s": last, "rank": 12345, "max_disp_len": 30},
        {"query_type": "get_doc_by_ptr", "s": 1, "ptr": 5000, "max_disp_len": 30},
        {"query_type": "get_doc_by_rank", "s": 4, "rank": 0},  # no such shard: 400, same message
        {"query_type": "get_doc_by_rank", "s": last, "rank": 10**7},  # a group's QueryError: 400
        {"query_type": "ntd", "query": "x", "max_support": 10**6},
        # text is a phrase of words (indexes/phrases.py): the front walks its token paths through the groups
        {"query_type": "count", "query": "the first time"},
        {"query_type": "prob", "query": "for the first time"},
        {"query_type": "ntd", "query": "the first", "max_support": 1000},
        {"query_type": "infgram_prob", "query": "was the first time"},
        {"query_type": "attribute", "query": "It was the first time that the river was seen", "min_tokens": 2},
    ]


def test_every_query_type_answers_as_the_engine(index, served):
    engine = Engine(index)
    for request in _requests(engine):
        status, out = _query(served, request)
        want_status, want = _expected(engine, request)
        out.pop("latency", None)
        want.pop("latency", None)
        assert (status, out) == (want_status, want), request


def test_search_docs_samples_over_all_shards(index, served):
    engine = Engine(index)
    ids = engine.tokenize(" river")
    for request in (
        {"query_type": "search_docs", "query_ids": ids, "maxnum": 10, "max_disp_len": 40},
        {"query_type": "search_docs", "query": "river AND bridge", "maxnum": 10, "max_disp_len": 40},
    ):
        status, out = _query(served, request)
        want = answer(engine, request)
        assert status == 200 and (out["cnt"], out["approx"]) == (want["cnt"], want["approx"]) and out["cnt"] > 0
        assert len(out["documents"]) == 10
        for doc in out["documents"]:  # each one is the engine's document, shown around the match
            full = engine.get_doc_by_ix(doc["doc_ix"], 10**6)["token_ids"]
            shown = doc["token_ids"]
            assert any(full[i : i + len(shown)] == shown for i in range(len(full) - len(shown) + 1))
            if request.get("query_ids"):
                assert shown[doc["needle_offset"] : doc["needle_offset"] + len(ids)] == ids


def _replica_names(deployment: str) -> list[str]:
    import ray

    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and f"#{deployment}#" in actor["name"]
    ]


def test_killing_a_replica_gives_errors_not_wrong_answers(index, served):
    import ray

    engine = Engine(index)
    words = [tuple(engine.tokenize(w)) for w in (" the", " river", " of the", " city", " war")]
    want = {w: (engine.count(list(w))["count"], engine.ntd(list(w), 10)) for w in words}
    seen: list[tuple[tuple, int, dict]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            for word in words:
                seen.append((word, *_query(served, {"query_type": "count", "query_ids": list(word)})))
                seen.append((word, *_query(served, {"query_type": "ntd", "query_ids": list(word), "max_support": 10})))

    (before,) = _replica_names("shards-2-3")
    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    ray.kill(ray.get_actor(before, namespace="serve"), no_restart=True)
    while _replica_names("shards-2-3") in ([], [before]):  # Serve notices, starts another
        time.sleep(0.5)
    while True:  # until the new replica answers
        status, after = _query(served, {"query_type": "count", "query_ids": list(words[0])})
        if status == 200:
            break
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()

    errors = [out for _, status, out in seen if status != 200]
    for word, status, out in seen:
        if status == 200 and "count" in out:
            assert out["count"] == want[word][0]
        elif status == 200:
            assert {int(k): v for k, v in out["result_by_token_id"].items()} == want[word][1]["result_by_token_id"]
        else:
            assert status == 503 and "shard group" in out["error"], out
    assert after["count"] == want[words[0]][0] and len(seen) > len(errors)


class _Local:
    """A unit-test double for a DeploymentHandle: calls a ShardGroup in this process, or fails as Ray
    does (an actor that died, a task whose code raised)."""

    def __init__(self, group, error: Exception | None = None):
        self.group, self.error = group, error

    def __getattr__(self, method: str):
        def remote(*args):
            outcome = self.error
            if outcome is None:
                try:
                    outcome = getattr(self.group, method)(*args)
                except Exception as e:
                    from ray.exceptions import RayTaskError

                    outcome = RayTaskError(method, "", e)
            return _Response(outcome)

        return type("Method", (), {"remote": staticmethod(remote)})


class _Response:
    def __init__(self, outcome):
        self.outcome = outcome

    def result(self, timeout_s: float):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _sharded(index, errors=(None, None)):
    from indexes.serve_ray import ShardedEngine, ShardGroup, split_shards
    from indexes.shards import open_shards

    card = json.loads((index / "index.json").read_text())
    groups = split_shards(card["shards"], 2)
    sizes = [(shard.doc_count, shard.token_count) for shard in open_shards(index, card)]
    handles = [_Local(ShardGroup(str(index), ids), error) for ids, error in zip(groups, errors)]
    return ShardedEngine(index, handles, groups, sizes)


def test_the_merge_equals_the_engine_without_ray(index):
    engine, sharded = Engine(index), _sharded(index)
    for request in _requests(engine):
        got, want = _expected(sharded, request), _expected(engine, request)
        got[1].pop("latency", None)
        want[1].pop("latency", None)
        assert got == want, request
    assert [sharded.get_doc_by_ix(i, 20) for i in (0, 40, engine.get_total_doc_cnt() - 1)] == [
        engine.get_doc_by_ix(i, 20) for i in (0, 40, engine.get_total_doc_cnt() - 1)
    ]
    assert sharded.count_batch([[5], [6, 7]]) == engine.count_batch([[5], [6, 7]])


def test_a_group_that_cannot_answer_fails_the_query_with_503(index):
    from ray.exceptions import ActorDiedError

    from indexes.server import ShardsUnavailable

    sharded = _sharded(index, errors=(None, ActorDiedError()))
    with pytest.raises(ShardsUnavailable, match="shard group is unavailable"):
        answer(sharded, {"query_type": "count", "query_ids": [5]})
    with pytest.raises(ShardsUnavailable):
        answer(sharded, {"query_type": "get_doc_by_rank", "s": 3, "rank": 0})
    assert answer(sharded, {"query_type": "get_doc_by_rank", "s": 0, "rank": 0})["doc_ix"] >= 0  # other group's


@pytest.mark.slow
def test_cli_serve_ray_runs_as_a_process_and_stops_cleanly(index):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    curate = os.path.join(os.path.dirname(sys.executable), "curate")
    argv = [curate, "index", "serve", str(index), "--ray", "--replicas", "2", "--port", str(port)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    status, out = 0, {}
    try:
        for line in process.stderr:  # the command says where it serves once the app is deployed
            if url in line:
                break
        while process.poll() is None:  # and Serve's proxy has the route soon after (404 before)
            try:
                status, out = _query(url, {"query_type": "count", "query_ids": [5, 6]})
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            time.sleep(1)
        assert status == 200 and out["count"] == Engine(index).count([5, 6])["count"]
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in err

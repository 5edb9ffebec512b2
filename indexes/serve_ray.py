"""`curate index serve DIR --ray`: the HTTP API of indexes/server.py on Ray Serve, over a cluster.

The shards are split into contiguous groups, one `ShardGroup` deployment each (a replica maps only
its group). The front deployment serves server.make_app over a `ShardedEngine`: the engine's own
code down to its per-shard primitives (rank ranges, next-token counts, CNF windows, documents),
which it fans out to the groups and merges. Every answer is therefore the single-process engine's:
counts add, prob and ntd merge their counts (ntd samples with the unit of the global count),
infgram takes the longest suffix seen in any group, find keeps per-shard segments and search_docs
samples over the global ranks. A group that does not answer (a dead replica that Serve is
restarting) fails the query with 503; no partial answer is ever merged.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.engine import Engine, QueryError
from indexes.layout import read_card
from indexes.server import ShardsUnavailable, make_app, warm_up
from indexes.shards import open_shards

APP_NAME = "curate-index"
GROUP_TIMEOUT_S = 60.0  # a group that takes longer is treated as unavailable
MAX_ONGOING = 256  # requests a replica takes at once (Serve's default of 5 queues 100 clients)


class ShardGroup:
    """A replica's group of shards: an Engine over them, answering the per-shard primitives."""

    def __init__(self, index_dir: str, shard_ids: list[int]):
        self.engine = Engine(index_dir, shard_ids=shard_ids)
        warm_up(self.engine)

    def segments(self, query: np.ndarray, hints: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
        return self.engine._segments(query, hints)

    def next_token_freq(self, prompt: np.ndarray, segments: list[tuple[int, int]], unit: int) -> dict[int, int]:
        return self.engine._next_token_freq(prompt, segments, unit)

    def cnf_parts(self, clauses: list[dict], max_diff_tokens: int) -> list[tuple[int, float, list[int]]]:
        return self.engine._cnf_parts(clauses, max_diff_tokens)

    def longest_seen_suffix(self, prompt: np.ndarray) -> int:
        return self.engine._longest_seen_suffix(prompt)

    def document(self, method: str, s: int, position: int, max_disp_len: int | None) -> dict:
        """get_doc_by_rank, get_doc_by_ptr or get_doc_by_ix on the group (doc_ix counted in the group)."""
        if method not in ("get_doc_by_rank", "get_doc_by_ptr"):
            return self.engine.get_doc_by_ix(position, max_disp_len)
        return getattr(self.engine, method)(s, position, max_disp_len)

    def doc_metadata(self, s: int, local: int) -> str:
        return self.engine.doc_metadata(s, local)


@dataclass
class RemoteShard:
    """What the front knows of a shard: its group, its place there, and its sizes."""

    group: int
    local: int
    doc_count: int
    token_count: int

    def __getattr__(self, name: str):
        """Code that reads a shard's arrays itself (not through the engine's primitives) cannot run on
        the front: say so as a bad request rather than fail."""
        raise QueryError(
            f"this query reads shard data directly ({name}), which the Ray deployment does not serve; "
            "send query_ids (token ids) or use `curate index serve` without --ray"
        )


class ShardedEngine(Engine):
    """The Engine's API over shard groups that answer elsewhere (DeploymentHandles to ShardGroup)."""

    def __init__(
        self, index_dir: str | Path, groups: list, shard_groups: list[list[int]], sizes: list[tuple[int, int]]
    ):
        """`sizes`: (documents, tokens) of every shard, in order."""
        super().__init__(index_dir, shard_ids=[])  # card and tokenizer only: the groups map the shards
        self.groups = groups
        self.shard_groups = shard_groups
        self.shards = [  # type: ignore[assignment]  # stand-ins: every use of a shard's data is overridden
            RemoteShard(g, local, *sizes[s]) for g, ids in enumerate(shard_groups) for local, s in enumerate(ids)
        ]
        self.doc_base = [sum(sh.doc_count for sh in self.shards if sh.group < g) for g in range(len(groups))]

    def _gather(self, calls: list[tuple[int, str, tuple]]) -> list:
        """Send every (group, method, args) call, then wait for all; any failure fails the whole query."""
        pending = [getattr(self.groups[g], method).remote(*args) for g, method, args in calls]
        results = []
        for response in pending:
            try:
                results.append(response.result(timeout_s=GROUP_TIMEOUT_S))
            except Exception as e:
                results.append(e)
        for result in results:
            if isinstance(result, Exception):
                raise _translated(result) from result
        return results

    def _by_group(self, per_shard: list) -> list[list]:
        return [per_shard[ids[0] : ids[-1] + 1] for ids in self.shard_groups]

    def _segments(self, query: np.ndarray, hints: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        group_hints = self._by_group(hints) if hints else [None] * len(self.groups)
        parts = self._gather([(g, "segments", (query, group_hints[g])) for g in range(len(self.groups))])
        return [tuple(segment) for part in parts for segment in part]

    def _next_token_freq(self, prompt: np.ndarray, segments: list[tuple[int, int]], unit: int) -> dict[int, int]:
        by_group = self._by_group(segments)
        calls = [
            (g, "next_token_freq", (prompt, by_group[g], unit))
            for g in range(len(self.groups))
            if any(start < end for start, end in by_group[g])
        ]
        freq: dict[int, int] = {}
        for part in self._gather(calls):
            for token, count in part.items():
                freq[token] = freq.get(token, 0) + count
        return freq

    def _cnf_parts(self, clauses: list[dict], max_diff_tokens: int) -> list[tuple[int, float, list[int]]]:
        def slice_of(g: int) -> list[dict]:
            ids = self.shard_groups[g]
            return [{key: values[ids[0] : ids[-1] + 1] for key, values in clause.items()} for clause in clauses]

        parts = self._gather([(g, "cnf_parts", (slice_of(g), max_diff_tokens)) for g in range(len(self.groups))])
        return [part for group_parts in parts for part in group_parts]

    def _longest_seen_suffix(self, prompt: np.ndarray) -> int:
        # A suffix seen anywhere is seen in some group, and every shorter suffix with it: the longest is the max.
        return max(self._gather([(g, "longest_seen_suffix", (prompt,)) for g in range(len(self.groups))]))

    def count_batch(self, list_of_input_ids: list[list[int]]) -> list[dict]:
        return [self.count(ids) for ids in list_of_input_ids]

    def get_doc_by_rank(self, s: int, rank: int, max_disp_len: int | None = None) -> dict:
        return self._document("get_doc_by_rank", s, rank, max_disp_len)

    def get_doc_by_ptr(self, s: int, ptr: int, max_disp_len: int | None = None) -> dict:
        return self._document("get_doc_by_ptr", s, ptr, max_disp_len)

    def get_doc_by_ix(self, doc_ix: int, max_disp_len: int | None = None) -> dict:
        total = self.get_total_doc_cnt()
        if not (isinstance(doc_ix, (int, np.integer)) and not isinstance(doc_ix, bool) and 0 <= doc_ix < total):
            raise QueryError(f"doc_ix must be an integer in range [0, {total})")
        g = int(np.searchsorted(self.doc_base, doc_ix, side="right")) - 1
        (doc,) = self._gather([(g, "document", ("get_doc_by_ix", 0, doc_ix - self.doc_base[g], max_disp_len))])
        return doc | {"doc_ix": doc["doc_ix"] + self.doc_base[g]}

    def doc_metadata(self, s: int, local: int) -> str:
        shard = self._shard(s)
        return self._gather([(shard.group, "doc_metadata", (shard.local, local))])[0]

    def _document(self, method: str, s: int, position: int, max_disp_len: int | None) -> dict:
        shard = self._shard(s)  # checks s against every shard, as the engine does
        (doc,) = self._gather([(shard.group, "document", (method, shard.local, position, max_disp_len))])
        return doc | {"doc_ix": doc["doc_ix"] + self.doc_base[shard.group]}


def _translated(error: Exception) -> Exception:
    """A group's QueryError stays a QueryError (400); Ray's failures to reach a group become 503."""
    from ray.exceptions import RayError, RayTaskError
    from ray.serve.exceptions import RayServeException

    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, QueryError):
            return QueryError(str(cause))
        return RuntimeError(f"a shard group failed: {type(cause).__name__}: {cause}")
    if isinstance(error, (RayError, RayServeException, TimeoutError)):
        return ShardsUnavailable(f"a shard group is unavailable ({type(error).__name__}); retry shortly")
    return error


class Front:
    """The ingress deployment: the JSON API over a ShardedEngine."""

    def __init__(self, index_dir: str, groups: list, shard_groups: list[list[int]], sizes: list[tuple[int, int]]):
        self.engine = ShardedEngine(index_dir, groups, shard_groups, sizes)

    def __serve_build_asgi_app__(self):
        return make_app(self.engine)


def split_shards(shards: int, replicas: int) -> list[list[int]]:
    """`replicas` contiguous groups of shards, as even as they can be."""
    if not 1 <= replicas <= shards:
        raise ValueError(f"--replicas must be from 1 to the index's {shards} shards, got {replicas}")
    return [part.tolist() for part in np.array_split(np.arange(shards), replicas)]


def deploy(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, replicas: int | None = None) -> str:
    """Deploy (or redeploy) the index on the connected Ray; returns the URL. Serve's HTTP proxy binds
    `host`:`port` the first time in a Ray cluster; later deploys reuse it."""
    import ray
    from ray import serve

    index_dir = str(Path(index_dir).resolve())
    card = read_card(Path(index_dir))
    shard_groups = split_shards(card["shards"], card["shards"] if replicas is None else replicas)
    sizes = [(shard.doc_count, shard.token_count) for shard in open_shards(Path(index_dir), card)]  # maps, reads none
    serve.start(http_options={"host": host, "port": port})
    # A group reserves a core where there are enough (Ray spreads them over nodes), a share where not.
    cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0) / len(shard_groups))
    groups = [
        serve.deployment(
            ShardGroup,
            name=f"shards-{ids[0]}-{ids[-1]}",
            max_ongoing_requests=MAX_ONGOING,
            ray_actor_options={"num_cpus": cpus},
        ).bind(index_dir, ids)
        for ids in shard_groups
    ]
    front = serve.deployment(  # it waits on the groups: no core of its own
        serve.ingress()(Front), name="front", max_ongoing_requests=MAX_ONGOING, ray_actor_options={"num_cpus": 0}
    )
    serve.run(front.bind(index_dir, groups, shard_groups, sizes), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}/"


def serve_on_ray(index_dir: str | Path, host: str, port: int, replicas: int | None, address: str | None) -> int:
    """The CLI's `--ray`: start or join Ray, deploy, serve until Ctrl-C, then take the app down."""
    from ray import serve

    from curate.ray_runtime import init_ray, ray_log_file

    shards = read_card(Path(index_dir))["shards"]  # a missing or broken index fails here, before Ray starts
    split_shards(shards, shards if replicas is None else replicas)  # and so does a wrong --replicas
    log_file = ray_log_file(Path(index_dir).resolve().parent)
    init_ray(address, log_file=log_file)
    for stop in (signal.SIGINT, signal.SIGTERM):  # both take the app down (a background job ignores SIGINT)
        signal.signal(stop, _interrupt)
    try:
        url = deploy(index_dir, host, port, replicas)
        print(
            f"serving {index_dir} with Ray Serve on {url} (API docs at {url}docs; Ctrl-C stops; "
            f"Ray's records in {log_file})",
            file=sys.stderr,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
    return 0


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt

"""Every `curate ...` command the documentation shows, checked against the code.

Each fenced shell example of README.md, the module READMEs and docs/*.md is parsed by curate's own
argument parser (subcommands, option names, choices, types, required arguments), and each
documented command is either run here on small real inputs or listed in `ELSEWHERE` with the test
that runs it and why it is not run here; a new documented command that is in neither fails. The
cheap ones (index query/contamination/dedup, `curate run --fresh`) run for real, with their answers
checked against the engine, the official infini-gram engine or brute force.
"""

from __future__ import annotations

import argparse
import contextlib
import html.parser
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from curate import registry
from curate.cli import _parser, main
from curate.documents import read_texts
from indexes.engine import Engine
from pipelines.runner import run_job
from pipelines.spec import load_job
from tests.index_support import DATA, official_engine

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted(REPO.glob("*/README.md")), *sorted(REPO.glob("*/*/README.md"))]
DOCS += sorted(REPO.glob("docs/*.md"))
SAMPLE = DATA / "samples" / "openwebtext_short12.jsonl"

# Documented commands this file does not run, keyed by subcommand: the test file that runs them
# and why not here (minutes of training, a model server, a cluster).
ELSEWHERE = {
    ("run",): (
        "tests/test_run.py",
        "KenLM models trained first; --fresh here, --address: test_ray_job_submit.py, s3://: test_storage.py",
    ),
    ("kenlm", "train"): ("tests/test_lm_cli.py", "lmplz on the demo's corpora takes minutes"),
    ("kenlm", "score"): ("tests/test_run.py", "needs trained models (the session fixture)"),
    ("kenlm", "calibrate"): ("tests/test_lm_cli.py", "trains and calibrates harmful models"),
    ("kenlm", "evaluate"): ("tests/test_lm_cli.py", "needs a calibrated model"),
    ("tokenizer", "train"): ("tests/test_index_cli_server.py", "a 32,000-token BPE on data/ takes ~30 s here"),
    ("index", "serve"): ("tests/test_index_cli_server.py", "a server process"),
    ("index", "attribute"): ("tests/test_index_attribution.py", "its own fixtures, checked against brute force"),
    ("index", "perplexity"): ("tests/test_index_neural.py", "Gemma 3 270M through llama.cpp (slow)"),
    ("train",): ("tests/test_train_job.py", "trains a model"),
    ("eval",): ("tests/test_eval_cli.py", "needs a trained checkpoint"),
    ("generate",): ("tests/test_eval_cli.py", "needs a trained checkpoint"),
    ("ablate",): ("tests/test_ablate.py", "trains a pool of models"),
    ("llm", "serve"): ("tests/test_llm_paths.py", "starts Gemma 3 270M (slow)"),
    ("rate", "distill"): ("tests/test_llm_paths.py", "needs LLM ratings (a scripted endpoint there)"),
}
RUN_HERE = {("index", "build"), ("index", "query"), ("index", "contamination"), ("index", "dedup")}


@dataclass
class Documented:
    where: str  # file:line
    text: str
    argv: list[str]  # after `curate`; `...` where the example elides arguments

    @property
    def elided(self) -> bool:
        return "..." in self.argv


def _commands_in(path: Path) -> list[Documented]:
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    fence, block = None, []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if fence is None:
                fence, block = stripped[3:].strip(), []
            else:
                if fence in ("", "bash", "sh", "shell", "console"):
                    found += _commands_of_block(path, block)
                fence = None
            continue
        if fence is not None:
            block.append((number, line))
    return found


def _commands_of_block(path: Path, block: list[tuple[int, str]]) -> list[Documented]:
    found, pending, start = [], "", 0
    for number, line in block:
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = (pending + line).strip().removeprefix("$ "), ""
        where, start = f"{path.relative_to(REPO)}:{start}", 0
        if not re.search(r"(^|[\s/])curate\s", text):
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError as e:  # e.g. an unclosed quote: reported by the parse test
            found.append(Documented(where, text, [f"<{e}>"]))
            continue
        for i, word in enumerate(words):
            if word.endswith("curate") and (i == 0 or words[i - 1] == "--"):
                argv = [w for w in words[i + 1 :] if w != "&"]
                found.append(Documented(where, text, argv))
                break
    return found


def documented_commands() -> list[Documented]:
    return [c for path in DOCS for c in _commands_in(path)]


def _subcommand(argv: list[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The subcommand path the argv names (aliases resolved to the name the help shows) and its parser."""
    parser, path = _parser(), []
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
        path.append(parser.prog.split()[-1])
    return tuple(path), parser


def _variants(doc: Documented) -> list[list[str]]:
    """The argv to validate: optional `[...]` parts included, `a|b` alternatives taken in turn, and
    CAPITAL placeholders given a value of the option's type."""
    words = [w.strip("[]") for w in doc.argv if w.strip("[]")]
    alternatives = max((len(w.split("|")) for w in words if re.fullmatch(r"[\w.-]+(\|[\w.-]+)+", w)), default=1)
    out = []
    for k in range(alternatives):
        argv = []
        for w in words:
            parts = w.split("|") if re.fullmatch(r"[\w.-]+(\|[\w.-]+)+", w) else [w]
            argv.append(parts[min(k, len(parts) - 1)])
        out.append(argv)
    _, parser = _subcommand(words)
    options = parser._option_string_actions
    for argv in out:
        for i, w in enumerate(argv):
            if re.fullmatch(r"[A-Z][A-Z_]*(\.\.\.)?", w) and i and argv[i - 1] in options:
                kind = options[argv[i - 1]].type
                argv[i] = "1" if kind is int else "0.5" if kind is float else w
    return out


def test_the_docs_show_commands_of_every_kind():
    commands = documented_commands()
    kinds = {_subcommand(c.argv)[0] for c in commands}
    assert len(commands) >= 30 and {("run",), ("index", "query"), ("kenlm", "train"), ("llm", "serve")} <= kinds


def test_every_documented_command_parses():
    """Subcommands, option names, choices, types and required arguments as curate's parser sees
    them; an example that elides arguments (`...`) is checked option by option."""
    problems = []
    for doc in documented_commands():
        path, parser = _subcommand(doc.argv)
        if not path:
            problems.append(f"{doc.where}: no such command: curate {doc.text}")
            continue
        for argv in _variants(doc):
            if doc.elided:
                unknown = [
                    w for w in argv if w.startswith("--") and w.split("=")[0] not in parser._option_string_actions
                ]
                if unknown:
                    problems.append(f"{doc.where}: {' '.join(path)} has no option {', '.join(unknown)}")
                continue
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
                _parser().parse_args(argv)
            if err.getvalue():
                problems.append(f"{doc.where}: `{doc.text}`: {err.getvalue().strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


def test_every_documented_command_is_run_here_or_by_a_named_test():
    missing, stale = [], []
    for doc in documented_commands():
        path, _ = _subcommand(doc.argv)
        if path in RUN_HERE:
            continue
        if path not in ELSEWHERE:
            missing.append(f"{doc.where}: curate {' '.join(path)}")
            continue
        test_file = REPO / ELSEWHERE[path][0]
        # the named test must exist and drive that command (by the CLI or the function behind it)
        if not test_file.is_file() or f'"{path[-1]}"' not in test_file.read_text():
            stale.append(f"{' '.join(path)} -> {ELSEWHERE[path][0]}")
    assert not missing, "documented commands no test runs (run them here or name their test):\n" + "\n".join(missing)
    assert not stale, "ELSEWHERE names a test file that does not run the command:\n" + "\n".join(stale)


def test_the_parser_check_catches_drift():
    """The walker's own check, on commands that must fail: a renamed option, a bad choice, a missing argument."""
    bad = [
        Documented("x", "", ["index", "query", "ix", "count", "x", "--max-suport", "5"]),
        Documented("x", "", ["index", "query", "ix", "nope", "x"]),
        Documented("x", "", ["kenlm", "score", "model"]),
    ]
    for doc in bad:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
            _parser().parse_args(_variants(doc)[0])
        assert "error:" in err.getvalue(), doc.argv


# ---------------------------------------------------------------- the cheap commands, run for real


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """The indexes README's `index build` on data/wiki with a small tokenizer."""
    root = tmp_path_factory.mktemp("docs")
    argv = ["tokenizer", "train", "--input", str(DATA / "wiki"), "--out", str(root / "tok.json"), "--vocab", "2000"]
    assert main(argv) == 0
    argv = ["index", "build", "--input", str(DATA / "wiki"), "--tokenizer", str(root / "tok.json")]
    assert main([*argv, "--out", str(root / "ix")]) == 0
    card = json.loads((root / "ix" / "index.json").read_text())
    return {
        "dir": root / "ix",
        "engine": Engine(root / "ix"),
        "ref": official_engine(root / "ix", card["eos_token_id"]),
    }


def _documented(kind: tuple[str, ...]) -> list[Documented]:
    return [d for d in documented_commands() if _subcommand(d.argv)[0] == kind]


def _run_cli(argv: list[str], capsys) -> str:
    assert main(argv) == 0, argv
    return capsys.readouterr().out


def _on_fixture(doc: Documented, index_dir: Path, tmp_path: Path) -> list[str]:
    """A documented argv with its index and output paths moved to this test's files."""
    argv = list(doc.argv)
    argv[2] = str(index_dir)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path / Path(argv[argv.index("--out") + 1]).name)
    return [str(REPO / a) if a.startswith("data/") else a for a in argv]


def _phrase_count(texts: list[str], phrase: str) -> int:
    """Occurrences of a text query by brute force: the indexes README's definition of a phrase,
    `(?<!\\S)PHRASE(?!\\w)`, overlapping, over the source documents."""
    pattern = re.compile(r"(?<!\S)(?=" + re.escape(phrase) + r"(?!\w))")
    return sum(len(pattern.findall(t)) for t in texts)


def test_documented_queries_answer_as_brute_force(index, tmp_path, capsys):
    """Each documented `index query` run on the fixture index: text queries (count, ntd,
    infgram_prob) against phrase counts over the source documents, an `OR` query and a query by
    ids against the official engine."""
    engine, ref = index["engine"], index["ref"]
    texts = [d["text"] for d in read_texts([str(DATA / "wiki")])]
    seen = set()
    for doc in _documented(("index", "query")):
        argv = _on_fixture(doc, index["dir"], tmp_path)
        kind, query = argv[3], argv[4]
        if kind == "prob":  # the README's ids come from its own 32,000-token BPE: take ours
            argv[4] = json.dumps(engine.tokenize(" the United States"))
        out = json.loads(_run_cli(argv, capsys))
        if kind == "count":
            assert out["count"] == _phrase_count(texts, query) > 0
        elif kind == "ntd":  # the next token over the phrase's occurrences
            assert out["prompt_cnt"] == _phrase_count(texts, query) > 0
            assert sum(v["cont_cnt"] for v in out["result_by_token_id"].values()) == out["prompt_cnt"]
            (following,) = engine.tokenize(" States")
            assert out["result_by_token_id"][str(following)]["cont_cnt"] == _phrase_count(texts, query + " States")
        elif kind == "infgram_prob":  # the whole prompt occurs here, so no back-off
            words = query.split()
            assert out["suffix_len"] == len(words) - 1
            assert out["prob"] == _phrase_count(texts, query) / _phrase_count(texts, " ".join(words[:-1])) > 0
        elif kind == "prob":
            ids = json.loads(argv[4])
            assert out["prob"] == ref.prob(ids[:-1], ids[-1])["prob"] > 0
        elif kind == "search_docs":
            _check_cnf_documents(engine, ref, query, out, int(argv[argv.index("--maxnum") + 1]))
        seen.add(kind)
    assert seen >= {"count", "ntd", "infgram_prob", "search_docs", "prob"}


def _check_cnf_documents(engine: Engine, ref, query: str, out: dict, maxnum: int) -> None:
    """`a AND b OR c`: the count equals the official engine's, and every returned document holds,
    within the window, a match of each clause (checked on its tokens by brute force)."""
    assert " OR " in query
    cnf = [[engine.tokenize(" " + term.strip()) for term in clause.split(" OR ")] for clause in query.split(" AND ")]
    assert out["cnt"] == ref.count_cnf(cnf, max_clause_freq=10**9, max_diff_tokens=100)["count"] > 0
    assert len(out["documents"]) == maxnum
    for doc in out["documents"]:
        tokens = doc["token_ids"]
        starts = [
            [i for i in range(len(tokens)) for term in clause if tokens[i : i + len(term)] == term] for clause in cnf
        ]
        assert all(starts), (query, doc["metadata"])
        anchor = doc["needle_offset"]
        assert any(abs(i - anchor) <= 100 for i in starts[1] + starts[0])


def test_documented_contamination_matches_brute_force(index, tmp_path, capsys):
    """The documented `index contamination`: each eval document's fraction of 13-grams found, recomputed
    by counting every 13-gram with the official engine."""
    engine, ref = index["engine"], index["ref"]
    (doc,) = _documented(("index", "contamination"))
    argv = _on_fixture(doc, index["dir"], tmp_path)
    # the documented eval file's first 2 documents (all of them take minutes here) and 2 web pages
    head = list(read_texts([argv[3]]))[:2] + list(read_texts([str(DATA / "web" / "openwebtext_1k.jsonl.gz")]))[:2]
    argv[3] = str(tmp_path / "eval.jsonl")
    Path(argv[3]).write_text("".join(json.dumps(d) + "\n" for d in head))
    rows = [json.loads(line) for line in _run_cli(argv, capsys).splitlines()]
    texts = {d["id"]: d["text"] for d in head}
    assert len(rows) == len(texts)
    for row in rows:
        ids = engine.tokenize(texts[row["id"]])
        grams = [ids[i : i + 13] for i in range(len(ids) - 12)]
        found = sum(ref.count(g)["count"] > 0 for g in grams)
        assert row["ngrams"] == len(grams) > 0 and row["ngrams_found"] == found
        assert row["ngram_found_fraction"] == pytest.approx(found / len(grams), abs=1e-6)
    fractions = [r["ngram_found_fraction"] for r in rows]
    assert fractions[:2] == [1.0, 1.0] and max(fractions[2:]) < 0.5  # the index holds wikitext2_valid, not the web


def test_documented_dedup_out_writes_the_table(index, tmp_path, capsys):
    """`index dedup --out FILE.parquet` writes what stdout would have shown, one row per document."""
    (doc,) = _documented(("index", "dedup"))
    argv = _on_fixture(doc, index["dir"], tmp_path)
    argv[argv.index("--min-tokens") + 1] = "20"  # the small fixture corpus repeats little at 50
    out_file = Path(argv[argv.index("--out") + 1])
    assert _run_cli(argv, capsys) == ""
    table = pq.read_table(out_file).to_pylist()
    on_stdout = [json.loads(line) for line in _run_cli(argv[: argv.index("--out")], capsys).splitlines()]
    assert table == on_stdout and len(table) == index["engine"].get_total_doc_cnt()
    assert sum(r["removed_tokens"] for r in table) > 0
    # brute force (Lee et al.): a token is removed when it lies in a 20-gram seen earlier in corpus order
    engine, seen = index["engine"], set()
    for ix, row in enumerate(table):
        ids = engine.get_doc_by_ix(ix, 10**7)["token_ids"]
        removed = [0] * len(ids)
        for p in range(len(ids) - 19):
            gram = tuple(ids[p : p + 20])
            if gram in seen:
                removed[p : p + 20] = [1] * 20
            seen.add(gram)
        assert row["removed_tokens"] == sum(removed), ix


# ---------------------------------------------------------------- `curate run`: --fresh, accounting, report


def _job(tmp_path: Path, stages: list[dict], name: str = "docs") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "inputs": [{"path": str(SAMPLE)}], "shard_docs": 6, "stages": stages}))
    return path


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def _external(report: str) -> list[str]:
    parser = _Links()
    parser.feed(report)
    urls = [u for u in parser.links if re.match(r"(?i)\s*(https?:|//|ftp:)", u)]
    return urls + re.findall(r"(?i)url\(\s*['\"]?(?:https?:|//)[^)]*\)|@import\s+['\"]?(?:https?:|//)\S*", report)


def test_run_fresh_starts_over_and_the_report_is_self_contained(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(_job(tmp_path, [{"langid": {"min_score": 0.5}}])), "--out", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["input"] == 12 == first["kept"] + sum(first["rejected"].values()) + first["quarantined"]
    report = (out / "report.html").read_text()
    assert "<img" in report and not _external(report)
    assert _external('<img src="https://x/p.png"><a href="//cdn/x">') and _external("a{background:url(http://x)}")

    stray = out / "kept" / "stray.parquet"
    stray.write_bytes(b"not a part of this run")
    other = _job(tmp_path, [{"langid": {"min_score": 0.9}}])
    capsys.readouterr()
    assert main(["run", str(other), "--out", str(out)]) == 2  # another configuration: refused
    assert "--fresh to start over" in capsys.readouterr().err and stray.exists()
    assert main(["run", str(other), "--out", str(out), "--fresh"]) == 0
    assert not stray.exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] != first["config_hash"] and manifest["input"] == 12
    assert "0 already done, 2 to process" in capsys.readouterr().out

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["run", str(other), "--out", str(tmp_path / "mine"), "--fresh"]) == 2
    assert "not a curate output directory" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.fixture
def leaky(monkeypatch):
    monkeypatch.setattr(registry, "STAGES", dict(registry.STAGES))  # undone after the test
    registry.register("min_chars", "tests.toy_stage:MinCharsConfig", "tests.toy_stage:LosesADocument")


def test_the_runner_fails_loudly_when_the_accounting_does_not_add_up(tmp_path, leaky):
    """A stage whose decision drops a document: the run stops and writes no manifest."""
    job = load_job(_job(tmp_path, [{"min_chars": {"min_chars": 1}}], name="leaky"))
    with pytest.raises(
        RuntimeError, match=r"accounting broken for run: input 12 != kept \+ rejected \+ quarantined 10"
    ):
        run_job(job, out=tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out" / "manifest.json").exists()

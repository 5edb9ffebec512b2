"""SentencePiece pieces of CCNet-normalised lines, as the space-joined strings KenLM scores.

`sp.encode(lines, out_type=str)` is what the models were trained with, and the reference. Most of
its time goes into SentencePiece's own normaliser, its Viterbi search and making a Python string
per piece. For lines that are printable ASCII (after CCNet normalisation, most web lines),
`PieceEncoder` asks a copy of the model with the normaliser switched off for ids (the normalisers
this accepts change no printable ASCII character) and maps them to pieces through a table. An
unknown piece has no table entry: SentencePiece gives its surface, the run of characters no piece
knows, which is cut from the line here the same way. Other lines, and models this cannot vouch
for, take the reference call.
"""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

# SentencePiece normalisers that leave printable ASCII as it is (NFKC maps no ASCII character;
# the nmt_ variants only control characters, which CCNet normalisation has already removed)
ASCII_IDENTITY = {"nfkc", "nmt_nfkc", "identity"}
SPACE = "\u2581"  # SentencePiece's whitespace mark: a piece of every model the fast path takes


class PieceEncoder:
    """Pieces of normalised non-empty lines, equal to `sp.encode(line, out_type=str)`."""

    def __init__(self, model_file: Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file), num_threads=1)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        self.table = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        self.unk = self.sp.unk_id()
        kind = sentencepiece_model_pb2.ModelProto.SentencePiece
        normal = [p for p in proto.pieces if p.type == kind.NORMAL]
        self.known = frozenset(p.piece for p in normal if len(p.piece) == 1)
        unknown = "".join(chr(c) for c in range(32, 127) if chr(c) not in self.known and chr(c) != " ")
        self.unknown_run = re.compile(f"[{re.escape(unknown)}]+" if unknown else "(?!)")
        user_defined = any(p.type == kind.USER_DEFINED for p in proto.pieces)
        self.ascii = None if user_defined else self._ascii_processor(proto, [p.piece for p in normal])

    def _ascii_processor(
        self, proto: sentencepiece_model_pb2.ModelProto, normal: list[str]
    ) -> spm.SentencePieceProcessor | None:
        """The model without its normaliser, when the fast path gives the reference's pieces:
        ASCII left as it is, whitespace handled as usual, no user-defined symbols, and every
        character of every piece a piece itself (so an unknown piece is exactly a run of unknown
        characters)."""
        spec = proto.normalizer_spec
        usual = spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces
        if spec.name not in ASCII_IDENTITY or not usual or proto.trainer_spec.treat_whitespace_as_suffix:
            return None
        if SPACE not in self.known or any(c not in self.known for p in normal for c in p):
            return None
        spec.name = "identity"
        spec.precompiled_charsmap = b""
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString(), num_threads=1)

    def encode(self, lines: list[str]) -> tuple[list[str], list[int]]:
        """Per line, its pieces joined by spaces (what KenLM scores) and their number."""
        fast = (
            [i for i, line in enumerate(lines) if line.isascii() and line.isprintable()]
            if self.ascii is not None
            else []
        )
        texts: list[str] = [""] * len(lines)
        counts: list[int] = [0] * len(lines)
        if len(fast) < len(lines):
            slow = sorted(set(range(len(lines))).difference(fast))
            for i, pieces in zip(slow, self.sp.encode([lines[i] for i in slow], out_type=str), strict=True):
                texts[i], counts[i] = " ".join(pieces), len(pieces)
        if fast:
            for i, ids in zip(fast, self.ascii.encode([lines[i] for i in fast]), strict=True):
                texts[i], counts[i] = self._joined(lines[i], ids), len(ids)
        return texts, counts

    def _joined(self, line: str, ids: list[int]) -> str:
        """The pieces of these ids of an ASCII line, joined by spaces."""
        return " ".join(self._with_unknown(line, ids) if self.unk in ids else map(self.table.__getitem__, ids))

    def _with_unknown(self, line: str, ids: list[int]) -> list[str]:
        """Pieces of an ASCII line whose ids hold unknown pieces. No known piece holds an unknown
        character and SentencePiece merges neighbouring unknown pieces, so the k-th unknown piece
        is the k-th run of unknown characters of the line."""
        pieces = list(map(self.table.__getitem__, ids))
        k = -1
        for run in self.unknown_run.findall(line):
            k = ids.index(self.unk, k + 1)
            pieces[k] = run
        return pieces

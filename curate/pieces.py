"""SentencePiece pieces of CCNet-normalised lines, as the space-joined strings KenLM scores.

`sp.encode(lines, out_type=str)` is what the models were trained with, and the reference. Most of
its time goes into work around the search: the normaliser with its alignment map, a result proto
per line, a Python string per piece. `PieceEncoder` runs SentencePiece's unigram search itself, for
a whole batch in one compiled call (`curate/unigram.py`), and joins the pieces in the same call.
Lines are normalised first: printable ASCII lines (after CCNet normalisation, most web lines)
need only SentencePiece's whitespace rules when the model's normaliser leaves such text as it is,
which the kernel applies; any other line goes through SentencePiece's own normaliser. Models the
kernel does not reproduce (not unigram, user-defined symbols, byte fallback) take the reference call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from curate.unigram import Segmented, Unigram, byte_slices, joined_pieces

# SentencePiece normalisers that leave printable ASCII as it is (NFKC maps no ASCII character;
# the nmt_ variants only control characters, which CCNet normalisation has already removed)
ASCII_IDENTITY = {"nfkc", "nmt_nfkc", "identity"}


class PieceEncoder:
    """Pieces of normalised non-empty lines, equal to `sp.encode(line, out_type=str)`."""

    def __init__(self, model_file: Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file), num_threads=1)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        self.unigram = Unigram.of(proto)
        if self.unigram is None:
            return
        spec = proto.normalizer_spec
        usual = spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces
        suffix = proto.trainer_spec.treat_whitespace_as_suffix
        self.raw_ascii = spec.name in ASCII_IDENTITY and usual and not suffix
        self.normalizer = spm.SentencePieceNormalizer(model_file=str(model_file))
        self.pieces = [p.piece.encode() for p in proto.pieces]
        self.piece_bytes = np.frombuffer(b"".join(self.pieces), dtype=np.uint8)
        self.piece_bounds = np.cumsum([0] + [len(p) for p in self.pieces], dtype=np.int64)

    def piece_table(self) -> list[bytes] | None:
        """Each piece id's text, when `segment` gives ids."""
        return self.pieces if self.unigram is not None else None

    def segment(self, lines: list[str]) -> Segmented | None:
        """The pieces of the lines as ids, by the compiled search; None for a model it does not
        reproduce."""
        if self.unigram is None:
            return None
        raw = [self.raw_ascii and line.isascii() and line.isprintable() for line in lines]
        data = [line.encode() if r else self.normalizer.normalize(line).encode() for line, r in zip(lines, raw)]
        bounds = np.cumsum([0] + [len(d) for d in data], dtype=np.int64)
        buf = np.frombuffer(b"".join(data), dtype=np.uint8)
        return self.unigram.encode(buf, bounds, np.array(raw, dtype=bool))

    def encode(self, lines: list[str]) -> tuple[list[bytes] | list[str], np.ndarray]:
        """Per line, its pieces joined by spaces (what KenLM scores, as UTF-8 bytes, or str from
        the reference call) and their number."""
        segmented = self.segment(lines)
        if segmented is None:
            pieces = self.sp.encode(lines, out_type=str)
            return [" ".join(p) for p in pieces], np.array([len(p) for p in pieces], dtype=np.int64)
        out, ends = joined_pieces(
            segmented.ids,
            segmented.line_ends,
            segmented.unknown,
            segmented.unknown_bounds,
            self.piece_bytes,
            self.piece_bounds,
            self.unigram.unk_id,
        )
        return byte_slices(out, np.concatenate(([0], ends))), segmented.counts()

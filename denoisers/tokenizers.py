"""T5 tokenizers shipped as `spiece.model` only (no `tokenizer.json`), loaded without protobuf.

PixArt-α/Σ, SD3 and FLUX hub pipelines ship their T5 tokenizer as `spiece.model` +
`tokenizer_config.json`. transformers then converts the sentencepiece model, which needs
sentencepiece's generated protobuf module and a protobuf runtime at least as new as the one it
was generated with; ortools pins protobuf below that, so the conversion fails (and
transformers' fallback message says to install tiktoken). A sentencepiece model file is a
small, stable protobuf message, so it is read here with a 30-line wire-format reader:

    ModelProto      1: repeated SentencePiece pieces   3: NormalizerSpec normalizer_spec
    SentencePiece   1: string piece   2: float score   3: enum type
    NormalizerSpec  2: bytes precompiled_charsmap

and handed to `transformers.T5Tokenizer(vocab=[(piece, score), ...], _spm_precompiled_charsmap=...)`,
which builds the same Unigram model (ids = piece order: pad 0, eos 1, unk 2 in T5 files) with
the settings of `tokenizer_config.json` (extra_ids, model_max_length, special tokens).

`spiece_tokenizers(pipeline_dir)` finds every such tokenizer component of a pipeline dir;
`load_pipeline` passes them to `from_pretrained`. A file that cannot be read is one QsensError
line naming the file and why.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from core.errors import QsensError

SPIECE = "spiece.model"
_T5_CLASSES = ("T5Tokenizer", "T5TokenizerFast")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes for
    length-delimited fields, raw 4/8 bytes for fixed32/fixed64."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _varint(buf, i)
        elif wt == 1:
            val, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            val, i = buf[i:i + n], i + n
        elif wt == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, val


def read_spiece(path: str | Path) -> tuple[list[tuple[str, float]], bytes | None]:
    """([(piece, score)...] in id order, precompiled_charsmap or None) of a sentencepiece model
    file. Raises QsensError naming the file when it is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QsensError(f"tokenizer file {path} cannot be read ({exc.strerror or exc})") from None
    pieces: list[tuple[str, float]] = []
    charsmap = None
    try:
        for num, wt, val in _fields(data):
            if num == 1 and wt == 2:
                piece, score = None, 0.0
                for n2, w2, v2 in _fields(val):
                    if n2 == 1 and w2 == 2:
                        piece = v2.decode("utf-8")
                    elif n2 == 2 and w2 == 5:
                        score = struct.unpack("<f", v2)[0]
                if piece is None:
                    raise ValueError("a piece without text")
                pieces.append((piece, float(score)))
            elif num == 3 and wt == 2:
                for n2, w2, v2 in _fields(val):
                    if n2 == 2 and w2 == 2:
                        charsmap = bytes(v2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QsensError(f"tokenizer file {path} is not a sentencepiece model ({exc})") from None
    if not pieces:
        raise QsensError(f"tokenizer file {path} is not a sentencepiece model (no pieces)")
    return pieces, charsmap


def load_t5_spiece(directory: str | Path):
    """A `transformers.T5Tokenizer` from `directory/spiece.model` + its tokenizer_config.json,
    without protobuf."""
    from transformers import T5Tokenizer

    d = Path(directory)
    pieces, charsmap = read_spiece(d / SPIECE)
    config: dict[str, Any] = {}
    cfg_path = d / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QsensError(f"tokenizer file {cfg_path} is not valid JSON ({exc})") from None
    special = {}
    smap = d / "special_tokens_map.json"
    if smap.is_file():
        try:
            special = json.loads(smap.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            special = {}
    kwargs: dict[str, Any] = {}
    for key in ("eos_token", "unk_token", "pad_token"):
        value = config.get(key, special.get(key))
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            kwargs[key] = value
    vocab = {p for p, _ in pieces}
    extra = int(config.get("extra_ids", 100))
    extra_tokens = [t for t in (config.get("additional_special_tokens") or []) if isinstance(t, str)]
    if extra and all(f"<extra_id_{i}>" in vocab for i in range(extra)):
        extra = 0  # the sentinels are pieces of the model already
    if extra_tokens:
        kwargs["additional_special_tokens"] = extra_tokens
    if config.get("model_max_length") is not None:
        kwargs["model_max_length"] = int(config["model_max_length"])
    try:
        return T5Tokenizer(vocab=pieces, extra_ids=extra, _spm_precompiled_charsmap=charsmap, **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers/tokenizers errors vary
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise QsensError(f"tokenizer file {d / SPIECE}: T5Tokenizer cannot be built from it "
                         f"({type(exc).__name__}: {first[:200]})") from None


def spiece_tokenizers(pipeline_dir: str | Path) -> dict[str, Any]:
    """{component: tokenizer} for the T5 tokenizer components of a pipeline dir that ship only
    `spiece.model` (no tokenizer.json); empty when there are none."""
    d = Path(pipeline_dir)
    index = d / "model_index.json"
    if not index.is_file():
        return {}
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    out = {}
    for name, value in components.items():
        if not (isinstance(value, list) and len(value) == 2 and value[0] == "transformers"):
            continue
        sub = d / name
        if (sub / SPIECE).is_file() and not (sub / "tokenizer.json").is_file():
            if value[1] not in _T5_CLASSES:
                raise QsensError(f"tokenizer {sub / SPIECE}: a {value[1]} shipped as spiece.model "
                                 "only; qsens reads T5 sentencepiece tokenizers without protobuf, "
                                 f"not {value[1]}: add its tokenizer.json")
            out[name] = load_t5_spiece(sub)
    return out

"""The real CLIP BPE tokenizer, built offline from a file that ships with the package.

``loopfree/assets/bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's BPE merges file (MIT, see
``loopfree/assets/LICENSE-CLIP``), the vocabulary every SD text encoder was trained with. It is package
data, so editable and wheel installs both find it; ``LOOPFREE_CLIP_BPE`` may point at another copy in the
same format. Nothing is downloaded and nothing is written: converting the merges into a Hugging Face
tokenizer in memory takes about 0.2 s, less than loading a saved one.
"""

from __future__ import annotations

import gzip
import os
from importlib.resources import files
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 byte symbols, the same with an end-of-word mark, 48,894 merges, 2 specials.
NUM_MERGES = 49152 - 256 - 2


def bpe_bytes() -> bytes:
    """The gzipped CLIP merges file: ``$LOOPFREE_CLIP_BPE`` if set, else the copy shipped in the package."""
    explicit = os.environ.get("LOOPFREE_CLIP_BPE")
    if explicit:
        return Path(explicit).read_bytes()
    return files("loopfree").joinpath("assets", BPE_FILE).read_bytes()


def clip_tokenizer(pad_token: str = "!") -> CLIPTokenizer:
    """CLIP tokenizer with max length 77. pad_token "!" is SD2.1's choice; SD1.5 pads with <|endoftext|>."""
    vocab, merges = _convert_bpe(bpe_bytes())
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token)
    tok.model_max_length = 77
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet: printable bytes map to themselves, the rest to 256+n.

    Insertion order matters: token ids follow it (printable bytes first, then the others).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def _convert_bpe(bpe_gz: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's merges file -> (vocab token->id, merges) in Hugging Face's CLIP layout."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : 1 + NUM_MERGES]  # line 0 is a version header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, [tuple(m.split()) for m in merges]

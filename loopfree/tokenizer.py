"""The real CLIP BPE tokenizer, built offline.

No model hub is reachable here, but the CLIP BPE merges (the vocabulary every SD text encoder was
trained with) ship inside the ``open-clip-torch`` wheel as ``open_clip/bpe_simple_vocab_16e6.txt.gz``.
We take that file from, in order: the ``LOOPFREE_CLIP_BPE`` environment variable, an installed
open_clip package, or a ``pip download --no-deps`` of the pinned wheel (PyPI only; the package is
never installed). The converted tokenizer is cached under ``$LOOPFREE_CACHE`` (default
``~/.cache/loopfree``) and later loads from disk in milliseconds.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

OPEN_CLIP_WHEEL = "open-clip-torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 byte symbols, the same with an end-of-word mark, 48,894 merges, 2 specials.
NUM_MERGES = 49152 - 256 - 2


def cache_dir() -> Path:
    return Path(os.environ.get("LOOPFREE_CACHE", Path.home() / ".cache" / "loopfree"))


def clip_tokenizer(pad_token: str = "!") -> CLIPTokenizer:
    """CLIP tokenizer with max length 77. pad_token "!" is SD2.1's choice; SD1.5 pads with <|endoftext|>."""
    target = cache_dir() / "clip-tokenizer"
    if not (target / "tokenizer_config.json").exists():
        vocab, merges = _convert_bpe(_bpe_bytes())
        tok = CLIPTokenizer(vocab=vocab, merges=merges)
        tok.model_max_length = 77
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent))
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: of two concurrent builders, one wins
        except OSError:
            shutil.rmtree(tmp)
    tok = CLIPTokenizer.from_pretrained(target, pad_token=pad_token)
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
    """open_clip's merges file -> (vocab token->id, merges) in Hugging Face's CLIP layout."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : 1 + NUM_MERGES]  # line 0 is a version header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, [tuple(m.split()) for m in merges]


def _bpe_bytes() -> bytes:
    explicit = os.environ.get("LOOPFREE_CLIP_BPE")
    if explicit:
        return Path(explicit).read_bytes()
    spec = importlib.util.find_spec("open_clip")
    if spec and spec.origin and (Path(spec.origin).parent / Path(BPE_MEMBER).name).exists():
        return (Path(spec.origin).parent / Path(BPE_MEMBER).name).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, OPEN_CLIP_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch the CLIP BPE vocabulary ({' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}). "
                "Set LOOPFREE_CLIP_BPE to a local copy of bpe_simple_vocab_16e6.txt.gz."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(BPE_MEMBER)

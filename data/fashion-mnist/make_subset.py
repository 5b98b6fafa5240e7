"""Rebuild this folder's Fashion-MNIST subset from the full dataset (reproducible to the byte).

    python data/fashion-mnist/make_subset.py [--source /usr/share/datasets/fashion-mnist] [--count 1000]

Keeps the first `count` images and labels of the test split (t10k) in the original IDX layout, gzipped
with a fixed header (no name, mtime 0), so the same source gives the same bytes. The source is any folder
with the four files of https://github.com/zalandoresearch/fashion-mnist (Debian: dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def subset_idx(data: bytes, count: int) -> bytes:
    """An IDX file (any type, any rank) -> the same file with only its first `count` items."""
    if data[:2] != b"\x00\x00":
        raise ValueError(f"not an IDX file (magic {data[:4].hex()})")
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    if data[2] != 0x08:
        raise ValueError(f"expected uint8 items (type 0x08), got 0x{data[2]:02x}")
    if count > dims[0]:
        raise ValueError(f"asked for {count} items, the file has {dims[0]}")
    item = 1
    for d in dims[1:]:
        item *= d
    body = 4 + 4 * rank
    header = data[:4] + count.to_bytes(4, "big") + data[8:body]
    return header + data[body : body + count * item]


def write_gzip(path: Path, data: bytes) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for name in (IMAGES, LABELS):
        full = gzip.decompress((args.source / name).read_bytes())
        write_gzip(args.out / name, subset_idx(full, args.count))
        digest = hashlib.sha256(gzip.decompress((args.out / name).read_bytes())).hexdigest()
        print(f"{args.out / name}: {args.count} items, sha256 of the IDX data {digest} "
              f"(source IDX data {hashlib.sha256(full).hexdigest()})")


if __name__ == "__main__":
    main()

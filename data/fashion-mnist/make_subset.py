"""Rebuild this folder's Fashion-MNIST subset from the full dataset (reproducible to the byte).

    python data/fashion-mnist/make_subset.py [--source /usr/share/datasets/fashion-mnist] [--count 1000] [--gan-count 2000]

Writes three subsets in the original IDX layout, gzipped with a fixed header (no name, mtime 0), so the same
source gives the same bytes:
- the test subset: the first `count` images and labels of the test split (t10k);
- the validation subset (train-val-*): `count` images and labels of the TRAINING split, the indices drawn with
  random.Random(0).sample(range(60000), count) and kept in file order. Recipes and run lengths are chosen on
  it; the test subset is scored once per final row;
- the GAN subset (train-gan-*): `gan_count` TRAINING images and labels outside the validation draw, drawn with
  random.Random(1).sample(<the other training indices, ascending>, gan_count) and kept in file order: the real
  images of DMD2's GAN term (docs/method.md), never scored against.
The source is any folder
with the four files of https://github.com/zalandoresearch/fashion-mnist (Debian: dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
VALIDATION = {"train-images-idx3-ubyte.gz": "train-val-images-idx3-ubyte.gz",
              "train-labels-idx1-ubyte.gz": "train-val-labels-idx1-ubyte.gz"}
GAN = {"train-images-idx3-ubyte.gz": "train-gan-images-idx3-ubyte.gz",
       "train-labels-idx1-ubyte.gz": "train-gan-labels-idx1-ubyte.gz"}
VALIDATION_SEED, GAN_SEED = 0, 1
TRAIN_SIZE = 60000


def subset_idx(data: bytes, count: int, indices: list[int] | None = None) -> bytes:
    """An IDX file (any type, any rank) -> the same file with only its first `count` items (or the items at
    `indices`, in that order)."""
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
    header = data[:4] + (count if indices is None else len(indices)).to_bytes(4, "big") + data[8:body]
    if indices is None:
        return header + data[body : body + count * item]
    return header + b"".join(data[body + i * item : body + (i + 1) * item] for i in indices)


def write_gzip(path: Path, data: bytes) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(data)


def draws(count: int, gan_count: int) -> tuple[list[int], list[int]]:
    """Training-split indices of the validation subset and of the GAN subset, disjoint, each ascending."""
    validation = sorted(random.Random(VALIDATION_SEED).sample(range(TRAIN_SIZE), count))
    others = sorted(set(range(TRAIN_SIZE)) - set(validation))
    return validation, sorted(random.Random(GAN_SEED).sample(others, gan_count))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--gan-count", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    validation, gan = draws(args.count, args.gan_count)
    jobs = ([(name, name, None) for name in (IMAGES, LABELS)] + [(s, o, validation) for s, o in VALIDATION.items()]
            + [(s, o, gan) for s, o in GAN.items()])
    for source, out, indices in jobs:
        full = gzip.decompress((args.source / source).read_bytes())
        write_gzip(args.out / out, subset_idx(full, args.count, indices))
        digest = hashlib.sha256(gzip.decompress((args.out / out).read_bytes())).hexdigest()
        print(f"{args.out / out}: {len(indices) if indices else args.count} items, sha256 of the IDX data {digest} "
              f"(source IDX data {hashlib.sha256(full).hexdigest()})")


if __name__ == "__main__":
    main()

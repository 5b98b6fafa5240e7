"""The prompt corpus on Ray Data: read, clean, deduplicate, order deterministically, tokenise.

Formats: JourneyDB ``train_anno.jsonl`` (caption under ``Task2`` -> ``Caption``/``caption``), Parquet or
TSV with a named column, plain text (one prompt per line); local paths or s3:// URIs, files or folders.
Bad records (invalid JSON or UTF-8, missing caption, non-string) and empty prompts are dropped and
counted; with ``on_bad_record: error`` the first bad record stops the job, naming file and line.

Order: every (prompt, epoch) pair gets the key blake2b(seed, epoch, prompt) and the table is sorted by
(epoch, key), then numbered (`position`). The order is therefore a pure function of the prompt set, the seed
and the epoch count, independent of files, blocks and cluster size, which is what exact resume and
worker-count parity need.

Sharding: global batch s is positions [s*G, (s+1)*G) and rank r trains on its slice [r*b, (r+1)*b) of it
(G = b * workers). `RankShards` gives each training worker a stream of only the positions of its slices, so
each worker reads, tokenises and receives 1/W of the corpus, in the same order whatever W is.
Prompts (not text states: those would be ~220 GB for 1.4M prompts, docs/method.md, "Data") stream to the
workers, which tokenise them and run the frozen text encoder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ExecutionOptions
from ray.data.expressions import col, lit
from ray.train import DataConfig

from loopfree_platform import storage


class CorpusError(ValueError):
    """A corpus that cannot be used (names the file and line)."""


@dataclass
class CorpusStats:
    records: int
    bad: int
    empty: int
    duplicates: int
    unique: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _caption(line: str, fmt: str, column: int | None) -> str:
    """One line -> its prompt; raises ValueError with the reason for a malformed record."""
    if fmt == "text":
        return line
    if fmt == "tsv":
        fields = next(csv.reader([line], delimiter="\t"))
        if column is None or column >= len(fields):
            raise ValueError("missing column")
        return fields[column]
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg})") from None
    task = record.get("Task2") if isinstance(record, dict) else None
    caption = task.get("Caption", task.get("caption")) if isinstance(task, dict) else None
    if not isinstance(caption, str):
        raise ValueError("no string caption under Task2 -> Caption/caption")
    return caption


def parse_file(row: dict, fmt: str, column: str | None, endpoint_url: str | None):
    """Yield {"prompt", "error"} for every line of one file (error = "file:line: reason" or "")."""
    path = row["path"]
    fs, inner = storage.filesystem(path, endpoint_url)
    with fs.open_input_stream(inner) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
        col_index, lineno = None, 0
        while True:
            lineno += 1
            try:
                line = lines.readline()
            except UnicodeDecodeError:
                yield {"prompt": "", "error": f"{path}:{lineno}: invalid UTF-8"}
                return  # the decoder cannot resynchronise: the rest of the file is not trusted
            if not line:
                return
            line = line.rstrip("\r\n")
            if fmt == "tsv" and col_index is None:  # header row names the column
                header = next(csv.reader([line], delimiter="\t"))
                if column not in header:
                    yield {"prompt": "", "error": f"{path}:1: no column {column!r} in header {header}"}
                    return
                col_index = header.index(column)
                continue
            if fmt != "text" and not line.strip():
                continue  # blank separator lines are not records
            try:
                yield {"prompt": _caption(line, fmt, col_index).strip(), "error": ""}
            except ValueError as err:
                yield {"prompt": "", "error": f"{path}:{lineno}: {err}"}


def _parquet_rows(batch: dict, column: str) -> dict:
    values = batch[column]
    ok = [isinstance(v, str) for v in values]
    return {"prompt": np.array([v.strip() if good else "" for v, good in zip(values, ok)], dtype=object),
            "error": np.array(["" if good else f"parquet column {column!r}: not a string ({v!r})"
                               for v, good in zip(values, ok)], dtype=object)}


def read_records(paths: list[str], fmt: str, column: str | None, endpoint_url: str | None) -> ray.data.Dataset:
    files = [f for p in paths for f in storage.list_files(p, endpoint_url)]
    if not files:
        raise CorpusError(f"data.paths {paths} hold no files")
    if fmt == "parquet":
        fs, _ = storage.filesystem(files[0], endpoint_url)
        inner = [storage.filesystem(f, endpoint_url)[1] for f in files]
        return ray.data.read_parquet(inner, filesystem=fs, columns=[column]).map_batches(
            _parquet_rows, fn_kwargs={"column": column}, batch_format="numpy")
    return ray.data.from_items([{"path": f} for f in files]).map_batches(
        _parse_files, batch_size=1, batch_format="numpy",
        fn_kwargs={"fmt": fmt, "column": column, "endpoint_url": endpoint_url})


PARSE_CHUNK = 50_000  # rows per output block of the parser: Ray Data pays per block, not per row


def _parse_files(batch: dict, fmt: str, column: str | None, endpoint_url: str | None):
    """map_batches generator: the files of `batch` -> blocks of {"prompt", "error"} columns."""
    for path in batch["path"]:
        prompts, errors = [], []
        for row in parse_file({"path": path}, fmt, column, endpoint_url):
            prompts.append(row["prompt"])
            errors.append(row["error"])
            if len(prompts) == PARSE_CHUNK:
                yield {"prompt": np.array(prompts, dtype=object), "error": np.array(errors, dtype=object)}
                prompts, errors = [], []
        if prompts:
            yield {"prompt": np.array(prompts, dtype=object), "error": np.array(errors, dtype=object)}


def _order_keys(batch: dict, seed: int, epochs: int) -> dict:
    prompts = list(batch["prompt"])
    out_prompt, out_epoch, out_key = [], [], []
    for epoch in range(epochs):
        for p in prompts:
            digest = hashlib.blake2b(f"{seed}:{epoch}:{p}".encode(), digest_size=8).digest()
            out_prompt.append(p)
            out_epoch.append(epoch)
            out_key.append(int.from_bytes(digest, "big") >> 1)  # non-negative int64
    return {"prompt": np.array(out_prompt, dtype=object), "epoch": np.array(out_epoch, dtype=np.int64),
            "key": np.array(out_key, dtype=np.int64)}


def _drop_repeats(block: pa.Table) -> pa.Table:
    """Rows of a sorted block equal to the row before them (same epoch, key and prompt) are dropped."""
    if block.num_rows < 2:
        return block
    epoch, key = block["epoch"].to_numpy(), block["key"].to_numpy()
    prompt = block["prompt"].to_numpy(zero_copy_only=False)
    repeat = (epoch[1:] == epoch[:-1]) & (key[1:] == key[:-1]) & (prompt[1:] == prompt[:-1])
    return block.filter(pa.array(np.concatenate([[True], ~repeat])))


@ray.remote
def _row_count(block: pa.Table) -> int:
    return block.num_rows


@ray.remote
def _with_positions(block: pa.Table, first: int) -> pa.Table:
    return block.append_column("position", pa.array(np.arange(first, first + block.num_rows, dtype=np.int64)))


def _numbered(ordered: ray.data.Dataset) -> ray.data.Dataset:
    """The ordered table with `position` = each row's index in the order, materialised: the blocks come back
    in order (to_arrow_refs), so each one's first position is the row count of the blocks before it."""
    blocks = ordered.to_arrow_refs()
    first = np.cumsum([0, *ray.get([_row_count.remote(b) for b in blocks])])
    return ray.data.from_arrow_refs([_with_positions.remote(b, int(f)) for b, f in zip(blocks, first)]).materialize()


ROWS_PER_PARTITION = 20_000


def _partitions(rows: int) -> int:
    """Shuffle partitions for `rows` rows: one per ROWS_PER_PARTITION, between 1 and Ray Data's default 200."""
    return max(1, min(200, -(-rows // ROWS_PER_PARTITION)))


def prepare_corpus(paths: list[str], fmt: str = "journeydb", column: str | None = None, on_bad_record: str = "skip",
                   epochs: int = 1, seed: int = 0, endpoint_url: str | None = None) -> tuple[ray.data.Dataset, CorpusStats]:
    """Driver side: parse, count, dedupe and order. Returns the ordered (prompt, epoch) table, materialised."""
    records = read_records(paths, fmt, column, endpoint_url).materialize()
    total = records.count()
    bad_rows = records.filter(expr=col("error") != lit(""))
    bad = bad_rows.count()
    if bad and on_bad_record == "error":
        raise CorpusError(f"bad record (on_bad_record: error): {bad_rows.take(1)[0]['error']}")
    good = records.filter(expr=(col("error") == lit("")) & (col("prompt") != lit(""))).materialize()
    n_good = good.count()
    if n_good == 0:
        raise CorpusError(f"data.paths {paths}: no usable prompts ({bad} bad, {total - bad} empty)")
    # One sort orders and deduplicates: a repeated prompt gets the same key, so its copies sort next to each
    # other, inside one block (sort range-partitions by key value), where _drop_repeats removes them.
    # Shuffle partitions are sized to the data: Ray Data's default of 200 costs tens of seconds of task
    # overhead on an 80-prompt corpus.
    keyed = good.map_batches(_order_keys, fn_kwargs={"seed": seed, "epochs": epochs}, batch_format="numpy")
    ordered = keyed.repartition(_partitions(n_good * epochs)).sort(["epoch", "key"])
    ordered = _numbered(ordered.map_batches(_drop_repeats, batch_size=None, batch_format="pyarrow"))
    n_unique = ordered.count() // epochs
    stats = CorpusStats(records=total, bad=bad, empty=total - bad - n_good, duplicates=n_good - n_unique, unique=n_unique)
    return ordered, stats


def rank_share(ordered: ray.data.Dataset, rank: int, batch_per_worker: int, global_batch: int,
               steps: int) -> ray.data.Dataset:
    """The rows rank `rank` trains on, in order: its slice of each of the first `steps` global batches."""
    position = col("position")
    mine = ((position % lit(global_batch)) // lit(batch_per_worker)) == lit(rank)
    return ordered.filter(expr=(position < lit(steps * global_batch)) & mine)


class RankShards(DataConfig):
    """Ray Train's data assignment with one deterministic share per rank (the module docstring's
    "Sharding"), instead of every worker streaming the whole table or `streaming_split`'s dynamic blocks.
    Each share is filtered in its worker's own Ray Data pipeline; the worker tokenises the b prompts of each
    step itself (microseconds per prompt, no extra process to start) and never those of skipped steps."""

    def __init__(self, batch_per_worker: int, global_batch: int, steps: int):
        super().__init__(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))
        self.batch_per_worker, self.global_batch, self.steps = batch_per_worker, global_batch, steps

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        ordered = datasets["train"]
        if world_size * self.batch_per_worker != self.global_batch:
            raise ValueError(f"{world_size} workers x batch {self.batch_per_worker} != global batch {self.global_batch}")
        shares = []
        for rank in range(world_size):
            share = rank_share(ordered, rank, self.batch_per_worker, self.global_batch, self.steps)
            share.context.execution_options = self._resolve_execution_options("train")
            shares.append({"train": share.iterator()})
        return shares

import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopfree_platform.distill.corpus import CorpusError, RankShards, prepare_corpus, rank_share

from tests.faults import FaultProxy

pytestmark = pytest.mark.usefixtures("ray_local")


def journeydb_lines():
    good = [{"Task2": {"Caption": f"prompt number {i}"}} for i in range(20)]
    return [json.dumps(r) for r in good] + [
        json.dumps({"Task2": {"caption": "lower-case key"}}),
        json.dumps({"Task2": {"Caption": "prompt number 3"}}),  # duplicate
        json.dumps({"Task2": {"Caption": "   "}}),  # empty
        "{not json",  # malformed, line 24
        json.dumps({"Task1": {}}),  # no caption
        json.dumps({"Task2": {"Caption": 7}}),  # not a string
    ]


def test_journeydb_clean_dedupe_count(tmp_path):
    path = tmp_path / "train_anno.jsonl"
    path.write_text("\n".join(journeydb_lines()) + "\n")
    ordered, stats = prepare_corpus([str(path)], "journeydb", epochs=2, seed=3)
    assert stats.as_dict() == {"records": 26, "bad": 3, "empty": 1, "duplicates": 1, "unique": 21}
    rows = ordered.take_all()
    assert len(rows) == 42 and [r["epoch"] for r in rows] == [0] * 21 + [1] * 21
    assert [r["position"] for r in rows] == list(range(42))  # numbered in the order
    assert {r["prompt"] for r in rows[:21]} == {f"prompt number {i}" for i in range(20)} | {"lower-case key"}
    assert [r["prompt"] for r in rows[:21]] != [r["prompt"] for r in rows[21:]]  # reshuffled per epoch


def test_order_is_deterministic_and_independent_of_file_layout(tmp_path):
    lines = journeydb_lines()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.jsonl").write_text("\n".join(lines))
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "a.jsonl").write_text("\n".join(lines[13:]))
    (tmp_path / "split" / "b.jsonl").write_text("\n".join(lines[:13]))
    first = [r["prompt"] for r in prepare_corpus([str(tmp_path / "one")], seed=1)[0].take_all()]
    again = [r["prompt"] for r in prepare_corpus([str(tmp_path / "split")], seed=1)[0].take_all()]
    other_seed = [r["prompt"] for r in prepare_corpus([str(tmp_path / "one")], seed=2)[0].take_all()]
    assert first == again and first != other_seed and sorted(first) == sorted(other_seed)


def test_on_bad_record_error_names_file_and_line(tmp_path):
    path = tmp_path / "train_anno.jsonl"
    path.write_text("\n".join(journeydb_lines()))
    with pytest.raises(CorpusError, match=rf"{path}:24: invalid JSON"):
        prepare_corpus([str(path)], on_bad_record="error")


def test_text_tsv_parquet_and_empty_corpus(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\na dog\na cat\n")
    assert prepare_corpus([str(tmp_path / "p.txt")], "text")[1].as_dict() == \
        {"records": 4, "bad": 0, "empty": 1, "duplicates": 1, "unique": 2}
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\nbond\tAbstract\nlife\tAbstract\n")
    assert prepare_corpus([str(tmp_path / "p.tsv")], "tsv", column="Prompt")[1].unique == 2
    with pytest.raises(CorpusError, match="no column 'Caption'"):
        prepare_corpus([str(tmp_path / "p.tsv")], "tsv", column="Caption", on_bad_record="error")
    pq.write_table(pa.table({"text": ["a cat", None, "a fish"]}), tmp_path / "p.parquet")
    assert prepare_corpus([str(tmp_path / "p.parquet")], "parquet", column="text")[1].as_dict() == \
        {"records": 3, "bad": 1, "empty": 0, "duplicates": 0, "unique": 2}
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(CorpusError, match="no usable prompts"):
        prepare_corpus([str(tmp_path / "empty.txt")], "text")


def test_reads_from_s3_the_same_prompts_as_from_a_local_file_also_when_downloads_are_cut(s3_endpoint, tmp_path):
    """Read through a proxy that cuts every 2nd download half-way: Ray Data's reads retry and no prompt is
    lost or doubled (a half-read file would lose or split lines)."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket="loopfree-test", Key="corpus/jdb/part-0.jsonl", Body="\n".join(journeydb_lines()[:10]).encode())
    s3.put_object(Bucket="loopfree-test", Key="corpus/jdb/part-1.jsonl", Body="\n".join(journeydb_lines()[10:]).encode())
    with FaultProxy(s3_endpoint, every=2, mode="cut", methods=("GET",), by_method=True) as proxy:
        ordered, stats = prepare_corpus(["s3://loopfree-test/corpus/jdb"], "journeydb", endpoint_url=proxy.url)
    assert proxy.by_kind.get("cut GET", 0) >= 1, (proxy.by_kind, proxy.per_method)
    assert stats.unique == 21 and stats.bad == 3
    (tmp_path / "local.jsonl").write_text("\n".join(journeydb_lines()))
    local, _ = prepare_corpus([str(tmp_path / "local.jsonl")], "journeydb")
    assert [r["prompt"] for r in ordered.take_all()] == [r["prompt"] for r in local.take_all()]

def test_rank_shares_are_each_ranks_slices_of_the_global_batches_in_order_and_streamed_per_rank(tmp_path):
    """Global batch s = positions [s*G, (s+1)*G); rank r's share = its slice [r*b, (r+1)*b) of each, in
    order, whatever the worker count: 2 ranks x b=2 and 4 ranks x b=1 see the same global batches as one rank
    with b=4, and each worker's stream carries only its share (1/W of the rows)."""
    path = tmp_path / "train_anno.jsonl"
    path.write_text("\n".join(journeydb_lines()) + "\n")
    ordered, _ = prepare_corpus([str(path)], "journeydb", epochs=2, seed=3)
    everything = [r["prompt"] for r in ordered.take_all()]
    G, steps = 4, 10  # 42 rows: the 2 rows past the last whole global batch are nobody's
    for workers in (1, 2, 4):
        b = G // workers
        shares = [[r["prompt"] for r in rank_share(ordered, rank, b, G, steps).take_all()] for rank in range(workers)]
        assert all(len(share) == steps * b for share in shares)  # falls as 1/W
        for s in range(steps):  # rank r's s-th batch is its slice of global batch s
            assert [p for share in shares for p in share[s * b:(s + 1) * b]] == everything[s * G:(s + 1) * G]
    iterators = RankShards(2, G, steps).configure({"train": ordered}, 2, None, None)
    for rank, iterator in enumerate(iterators):  # what each training worker streams
        streamed = [p for b in iterator["train"].iter_batches(batch_size=2, batch_format="numpy") for p in b["prompt"]]
        assert streamed == [everything[s * G + rank * 2 + j] for s in range(steps) for j in range(2)]
    with pytest.raises(ValueError, match="3 workers x batch 2 != global batch 4"):
        RankShards(2, G, steps).configure({"train": ordered}, 3, None, None)


def test_many_repeats_across_files_leave_each_prompt_once_per_epoch(tmp_path):
    """Deduplication by the ordering sort: 300 records of 40 prompts over 3 files, 2 epochs."""
    for f in range(3):
        (tmp_path / f"{f}.txt").write_text("\n".join(f"prompt {(i * 7 + f) % 40}" for i in range(100)) + "\n")
    ordered, stats = prepare_corpus([str(tmp_path)], "text", epochs=2, seed=5)
    rows = ordered.take_all()
    assert stats.as_dict() == {"records": 300, "bad": 0, "empty": 0, "duplicates": 260, "unique": 40}
    for epoch in (0, 1):
        assert sorted(r["prompt"] for r in rows if r["epoch"] == epoch) == sorted(f"prompt {i}" for i in range(40))
    assert [r["position"] for r in rows] == list(range(80))

"""The quickstart's time split (benchmarks/quickstart_time.py): its arithmetic on hand-made events."""

import json

import pytest

import benchmarks.quickstart_time as qt


def test_the_split_sums_each_phase_of_the_driver_and_rank0_and_divides_by_the_whole_command(tmp_path, monkeypatch):
    path = tmp_path / "timing.jsonl"
    events = [("driver", "starting Ray", 2.0), ("rank0", "worker: evaluation", 3.0),
              ("rank0", "worker: evaluation", 1.0), ("rank1", "worker: evaluation", 7.0)]  # rank 1 is not shown
    path.write_text("".join(json.dumps({"who": w, "phase": p, "start": 0, "seconds": s}) + "\n" for w, p, s in events))
    monkeypatch.setattr(qt, "T_PROCESS", 100.0)
    rows = qt.summarise(str(path), t_end=120.0)  # a 20 s command
    assert rows[2:] == ["| driver: starting Ray | 1 | 2.0 | 10.0% |", "| rank0: worker: evaluation | 2 | 4.0 | 20.0% |",
                        "| **whole command** | 1 | **20.0** | 100% |"]


def test_a_timed_phase_is_recorded_also_when_it_raises(tmp_path):
    path = tmp_path / "timing.jsonl"

    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        qt._timed(qt._recorder(str(path), "driver"), "a phase", fails, quiet=True)()
    (event,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert event["who"] == "driver" and event["phase"] == "a phase" and event["seconds"] >= 0

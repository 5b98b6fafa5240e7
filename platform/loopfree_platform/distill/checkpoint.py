"""Checkpoint layout of a distillation run (one Ray Train checkpoint directory, merged from all ranks):

    student/state/...   DeepSpeed shards of the student and its optimizer (every rank writes its own)
    fake_score/state/... the same for the fake score (LoRA weights on the shared UNet, or the full copy) and its optimizer
    ema.safetensors     EMA of the student (rank 0)
    state.json          step, data position (rows consumed) and counters (rank 0)

Every rank uploads its own files (`uploader`) and reports only once each of them is in storage with its
size. A resumed run takes the newest checkpoint that every rank can read in full (`verify`): a truncated,
incomplete or corrupt latest one falls back to the one before, with a warning (docs/reliability.md).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch
from safetensors.torch import load_file, save_file

from loopfree.distiller import Distiller
from loopfree_platform import storage


@dataclass
class TrainState:
    step: int = 0  # next step to run
    rows_consumed: int = 0  # data position in the ordered corpus stream
    nonfinite_total: int = 0  # steps skipped for a non-finite loss (faults)
    overflow_total: int = 0  # fp16 loss-scale overflows DeepSpeed skipped (routine; never stop the job)
    metrics: dict | None = None  # what was reported with this checkpoint (to backfill trackers after a crash)

    def save(self, directory: Path) -> None:
        (directory / "state.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: Path) -> "TrainState":
        return cls(**json.loads((directory / "state.json").read_text()))


def save(directory: Path, distiller: Distiller, student_engine, fake_score_engine, state: TrainState, rank: int) -> None:
    student_engine.save(str(directory / "student"))
    fake_score_engine.save(str(directory / "fake_score"))
    if rank == 0:
        save_file({f"{i}": t.detach().contiguous().cpu() for i, t in enumerate(distiller.ema.shadow)},
                  str(directory / "ema.safetensors"))
        state.save(directory)


def uploader(run_dir: str, endpoint_url: str | None):
    """`checkpoint_upload_fn` for `ray.train.report`: this rank's checkpoint files to <run_dir>/<name>.

    Ray Train's own upload is pyarrow's `copy_files`, which returns as if done when an upload still fails
    after the SDK's retries (the file is simply absent); `storage.upload_dir` raises instead, so the rank
    fails and Ray Train restarts the group from the last complete checkpoint."""
    def upload(local: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        uri = storage.join(run_dir, name)
        storage.upload_dir(local.path, uri, endpoint_url)
        fs, path = storage.filesystem(uri, endpoint_url)
        return ray.train.Checkpoint(path=path, filesystem=fs)

    return upload


def restore(directory: Path, distiller: Distiller, student_engine, fake_score_engine) -> TrainState:
    student_engine.load(str(directory / "student"))
    fake_score_engine.load(str(directory / "fake_score"))
    ema = load_file(str(directory / "ema.safetensors"))
    with torch.no_grad():
        for i, shadow in enumerate(distiller.ema.shadow):
            shadow.copy_(ema[str(i)])
    state = TrainState.load(directory)
    distiller.ema.num_updates.fill_(state.step)  # one EMA update per completed step
    return state


def verify(directory: Path, rank: int) -> str | None:
    """None if this rank can read everything it will load from the checkpoint, else what is wrong. Reads,
    never loads into the engines (a failure half-way through DeepSpeed's loader could leave ranks stuck in
    different collectives); the .pt files with the same safe loader the engines use."""
    from loopfree_platform.distill.engines import safe_load

    try:
        TrainState.load(directory)
        load_file(str(directory / "ema.safetensors"))
        for engine in ("student", "fake_score"):
            shards = sorted((directory / engine / "state").glob("*.pt"))
            if not any(f"zero_pp_rank_{rank}_" in s.name for s in shards):
                return f"{engine}: no DeepSpeed partition of rank {rank}"
            for shard in shards:
                own = re.search(r"zero_pp_rank_(\d+)_", shard.name)
                if own is None or int(own.group(1)) == rank:  # shared files, and this rank's partition
                    safe_load(str(shard), map_location="cpu")
    except Exception as err:  # truncated zip, bad JSON, missing file, refused pickle: all mean "unusable"
        return f"{type(err).__name__}: {str(err)[:200]}"
    return None


def candidates(latest: str, filesystem: pafs.FileSystem) -> list[str]:
    """The latest checkpoint path, then the older ones beside it (checkpoint_<step>), newest first."""
    parent, name = posixpath.split(latest.rstrip("/"))
    found = filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted((f.base_name for f in found if f.type == pafs.FileType.Directory
                    and f.base_name.startswith("checkpoint_") and f.base_name < name), reverse=True)
    return [latest] + [posixpath.join(parent, n) for n in older]

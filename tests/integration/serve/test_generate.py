"""The batch generation job on a real local Ray: a PartiPrompts subset, killed mid-way and re-run, yields
every image exactly once; prompt files with bad records fail with file:line before any cluster work."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import PIL.Image
import pytest
import ray
from loopfree_platform.serve.generate import GenerateError, read_records, run_generate
from loopfree_platform.serve.job import GenerateJob

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = 48


def job_dict(model_dir, out, **generation) -> dict:
    return {"name": "parti-subset", "model": {"source": str(model_dir)},
            "prompts": {"path": str(ROOT / "data/PartiPrompts.tsv"), "format": "tsv", "column": "Prompt", "limit": PROMPTS},
            "output": {"root": str(out)}, "generation": {"batch_size": 4, "replicas": 1, **generation}}


def parts(out: Path) -> list[Path]:
    return sorted((out / "manifest").glob("part-*.jsonl")) if (out / "manifest").exists() else []


@pytest.mark.timeout(600)  # waits up to 240 s for the first parts, then generates the rest
def test_interrupted_job_resumes_and_writes_each_image_once(ray_local, tiny_pipeline_dir, tmp_path, write_job):
    out = tmp_path / "out"
    job_file = write_job(job_dict(tiny_pipeline_dir, out), "generate.yaml")
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "loopfree_platform.cli", "generate", str(job_file), "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(parts(out)) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-job; Ray cleans up its actors
    driver.wait()
    time.sleep(1.0)  # a replica may finish the batch in flight; what it wrote is done, not lost
    done_before = {json.loads(line)["id"] for p in parts(out) for line in p.read_text().splitlines()}
    assert 0 < len(done_before) < PROMPTS, f"the kill should land mid-job, {len(done_before)} of {PROMPTS} done"
    assert not (out / "manifest.jsonl").exists()
    print(f"driver killed with {len(done_before)} of {PROMPTS} images recorded in {len(parts(out))} manifest parts")
    stamps = {i: (out / "images" / f"{i}.png").stat().st_mtime_ns for i in done_before}

    result = run_generate(GenerateJob.model_validate(job_dict(tiny_pipeline_dir, out, replicas=2)), address=address)
    assert (result.skipped, result.generated, result.total) == (len(done_before), PROMPTS - len(done_before), PROMPTS)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert ids == [f"{i:06d}" for i in range(PROMPTS)]  # each prompt exactly once, in file order
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i}.png" for i in ids]
    assert all((out / r["path"]).is_file() and r["seed"] == int(r["id"]) and r["model_version"] == result.model_version
               for r in rows)
    assert {i: (out / "images" / f"{i}.png").stat().st_mtime_ns for i in done_before} == stamps  # done = not redone
    parti = (ROOT / "data/PartiPrompts.tsv").read_text().splitlines()[1:]
    assert rows[5]["prompt"] == parti[5].split("\t")[0].strip()

    again = run_generate(GenerateJob.model_validate(job_dict(tiny_pipeline_dir, out)), address=address)
    assert (again.generated, again.skipped) == (0, PROMPTS)  # a finished job re-run does nothing

    deleted = ids[:4]
    for i in deleted:
        (out / "images" / f"{i}.png").unlink()
    redo = run_generate(GenerateJob.model_validate(job_dict(tiny_pipeline_dir, out)), address=address)
    assert (redo.generated, redo.skipped) == (4, PROMPTS - 4)  # a deleted image is not done
    assert all((out / "images" / f"{i}.png").is_file() for i in deleted)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ids and all((out / r["path"]).is_file() for r in rows)


def test_an_output_root_of_another_model_is_refused(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    (out / "manifest").mkdir(parents=True)
    (out / "manifest" / "part-x.jsonl").write_text(json.dumps({"id": "000000", "model_version": "sha-other"}) + "\n")
    with pytest.raises(GenerateError, match="sha-other"):
        run_generate(GenerateJob.model_validate(job_dict(tiny_pipeline_dir, out)))


@pytest.mark.parametrize("lines, words", [
    (['{"prompt": "a"}', '{"prompt": 3}'], ":2: 'prompt' must be a non-empty string"),
    (['{"prompt": "a", "id": "../../etc/x"}'], ":1: id '../../etc/x' is not a safe file name"),
    (['{"prompt": "a", "id": "/abs"}'], "is not a safe file name"),
    (['{"prompt": "a", "id": "k"}', '{"prompt": "b", "id": "k"}'], ":2: duplicate id 'k'"),
    (['{"prompt": "a", "seed": -1}'], ":1: seed must be an integer"),
    (['{"prompt": "a"}', '{"prompt": "b", "seed": 4294967296}'], ":2: seed must be an integer in [0, 2**32)"),
    (['{"prompt": "a"}', "{oops"], ":2: not valid JSON"),
    ([], "no prompts"),
])
def test_bad_prompt_records_name_file_and_line(tmp_path, tiny_pipeline_dir, lines, words):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    job = GenerateJob.model_validate({"model": {"source": str(tiny_pipeline_dir)},
                                      "prompts": {"path": str(path), "column": "prompt", "id_column": "id"},
                                      "output": {"root": str(tmp_path / "out")}})
    with pytest.raises(GenerateError) as err:
        read_records(job)
    assert words in str(err.value) and str(path) in str(err.value)


def test_prompt_formats(tmp_path, tiny_pipeline_dir):
    text = tmp_path / "p.txt"
    text.write_text("a cat\n\n a dog \n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": "a cat", "key": "c1", "seed": 99}\n{"text": "a dog", "key": "d2"}\n')
    base = {"model": {"source": str(tiny_pipeline_dir)}, "output": {"root": str(tmp_path)}, "generation": {"seed": 10}}
    got = read_records(GenerateJob.model_validate({**base, "prompts": {"path": str(text)}}))
    assert got == [{"id": "000000", "prompt": "a cat", "seed": 10}, {"id": "000001", "prompt": "a dog", "seed": 11}]
    prompts = {"path": str(jsonl), "column": "text", "id_column": "key"}
    got = read_records(GenerateJob.model_validate({**base, "prompts": prompts}))
    assert got == [{"id": "c1", "prompt": "a cat", "seed": 99}, {"id": "d2", "prompt": "a dog", "seed": 11}]


def test_s3_model_and_s3_output_through_an_endpoint_that_throttles_and_cuts(ray_local, s3_endpoint, tiny_pipeline_dir,
                                                                             tmp_path, monkeypatch):
    """Model read from an s3:// prefix, images and manifest written to s3:// (moto on 127.0.0.1), through a
    proxy that spoils every 4th request of each method, in turn answering 503 SlowDown and cutting the transfer
    half-way: the download and the writes retry, and every image arrives whole."""
    from loopfree_platform import storage

    from tests.faults import FaultProxy

    monkeypatch.setenv("LOOPFREE_CACHE", str(tmp_path / "cache"))
    storage.upload_dir(tiny_pipeline_dir, "s3://loopfree-test/models/tiny")
    job = job_dict("s3://loopfree-test/models/tiny", "s3://loopfree-test/generated/parti")
    job["prompts"]["limit"] = 6
    with FaultProxy(s3_endpoint, every=4, mode=("503", "cut"), by_method=True) as proxy:
        job["model"]["endpoint_url"] = job["output"]["endpoint_url"] = proxy.url
        result = run_generate(GenerateJob.model_validate(job))
    print(f"faults injected: {proxy.by_kind} in {proxy.per_method} requests")
    assert proxy.injected >= 3 and {"cut GET", "cut PUT"} <= set(proxy.by_kind), (proxy.by_kind, proxy.per_method)
    assert (result.generated, result.total) == (6, 6)
    rows = [json.loads(x) for x in storage.read_bytes("s3://loopfree-test/generated/parti/manifest.jsonl").decode().splitlines()]
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(6)]
    images = storage.list_files("s3://loopfree-test/generated/parti/images")
    assert [i.rsplit("/", 1)[1] for i in images] == [f"{i:06d}.png" for i in range(6)]
    for image in images:  # whole PNGs: each decodes
        PIL.Image.open(io.BytesIO(storage.read_bytes(image))).load()


def test_registry_source_resolves_to_the_aliased_version(tiny_pipeline_dir, tmp_path, monkeypatch):
    """models:/<name>@<alias> -> the registered pipeline artifact, downloaded once, with its version."""
    import mlflow
    from loopfree_platform.models import ModelSourceError, resolve
    from loopfree_platform.tracking import fluent_tracking_uri, pyfunc_model

    monkeypatch.setenv("LOOPFREE_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with fluent_tracking_uri(uri):
        mlflow.set_experiment("registry-test")
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=pyfunc_model(), artifacts={"pipeline": str(tiny_pipeline_dir)},
                                    registered_model_name="tiue-test", pip_requirements=["loopfree"])
    mlflow.tracking.MlflowClient(uri).set_registered_model_alias("tiue-test", "candidate", "1")
    model = resolve("models:/tiue-test@candidate", tracking_uri=uri)
    assert model.version == "1" and model.name == "tiue-test"
    assert (model.local_dir / "model_index.json").is_file() and (model.local_dir / "unet").is_dir()
    assert resolve("models:/tiue-test/1", tracking_uri=uri).local_dir == model.local_dir
    with pytest.raises(ModelSourceError, match="models:/tiue-test@production"):
        resolve("models:/tiue-test@production", tracking_uri=uri)


def test_done_means_the_image_exists_and_was_made_from_the_same_prompt_and_seed(tmp_path):
    from loopfree_platform.serve.generate import done_rows, is_done

    (tmp_path / "manifest").mkdir()
    (tmp_path / "images").mkdir()
    rows = [{"id": i, "prompt": f"p{i}", "seed": 0, "path": f"images/{i}.png"} for i in ("a", "b")]
    (tmp_path / "manifest" / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "images" / "a.png").write_bytes(b"png")  # b's image was deleted
    done = done_rows(str(tmp_path), None)
    assert sorted(done) == ["a"]
    assert is_done({"id": "a", "prompt": "pa", "seed": 0}, done)
    assert not is_done({"id": "a", "prompt": "pa edited", "seed": 0}, done)
    assert not is_done({"id": "a", "prompt": "pa", "seed": 1}, done)
    assert not is_done({"id": "b", "prompt": "pb", "seed": 0}, done)

"""The command line's one convention (YAML dry runs, --set, exit 2 naming the key, --version, env, submit's
job kinds) and the quiet console (one bar and a summary on the terminal, the chatter in the log file)."""

import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from loopfree_platform import submit
from loopfree_platform.cli import main
from loopfree_platform.jobfile import JobError, apply_sets, parse_sets

from tests.sockets import beyond_loopback, watch_tree

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = str(ROOT / "data" / "PartiPrompts.tsv")
REGISTRY = "models:/loopfree-tiue@candidate"  # statically valid model source: no export needed to validate


def test_set_values_are_parsed_as_yaml_and_bad_items_are_named():
    sets = parse_sets(["training.max_steps=20", "method.guidance_scale=2.0", "data.paths=[a.tsv, b.tsv]",
                       "name=run one", "tracking.mlflow_uri=", "sampling.prompts=['x=y']"])
    assert sets == {"training.max_steps": 20, "method.guidance_scale": 2.0, "data.paths": ["a.tsv", "b.tsv"],
                    "name": "run one", "tracking.mlflow_uri": None, "sampling.prompts": ["x=y"]}
    for bad in ("training.max_steps", "=3", "training..max_steps=3", "training.=3"):
        with pytest.raises(JobError, match="expected section.key=value"):
            parse_sets([bad])
    with pytest.raises(JobError, match="--set method.x: the value is not valid YAML"):
        parse_sets(["method.x=[1, 2"])


def test_sets_apply_to_a_copy_and_a_scalar_on_the_way_is_an_error():
    raw = {"name": "a", "training": {"max_steps": 8}}
    out = apply_sets(raw, {"training.max_steps": 2, "evaluation.reference.limit": 5})
    assert out == {"name": "a", "training": {"max_steps": 2}, "evaluation": {"reference": {"limit": 5}}}
    assert raw == {"name": "a", "training": {"max_steps": 8}}
    with pytest.raises(JobError, match="--set name.x: name is not a section"):
        apply_sets(raw, {"name.x": 1})


def test_distill_dry_run_is_yaml_with_the_overrides_applied(capsys):
    assert main(["distill", str(ROOT / "jobs" / "smoke.yaml"), "--dry-run",
                 "--set", "training.max_steps=20", "--set", "method.guidance_scale=2.0"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["training"]["max_steps"] == 20 and plan["method"]["guidance_scale"] == 2.0
    assert plan["method"]["lambda_kl"] == 0.1  # resolved: DistillConfig's defaults filled in


def _job_files(tmp_path: Path, write_job, smoke_job) -> dict[str, Path]:
    distill = write_job(smoke_job(), "distill.yaml")
    return {
        "distill": distill,
        "sweep": write_job({"name": "sw", "base": str(distill), "grid": {"method.lora_rank": [4, 8]}}, "sweep.yaml"),
        "evaluate": ROOT / "jobs" / "evaluate.yaml",
        "serve": write_job({"model": {"source": REGISTRY}}, "serve.yaml"),
        "generate": write_job({"model": {"source": REGISTRY}, "prompts": {"path": PROMPTS},
                               "output": {"root": str(tmp_path / "out")}}, "generate.yaml"),
    }


@pytest.mark.parametrize("command, item, read, value", [
    ("distill", "training.max_steps=3", lambda p: p["training"]["max_steps"], 3),
    ("sweep", "seeds=[0, 1]", lambda p: sorted({r["seed"] for r in p["runs"]}), [0, 1]),
    ("evaluate", "prompts.limit=5", lambda p: p["prompts"]["limit"], 5),
    ("serve", "http.port=8123", lambda p: p["http"]["port"], 8123),
    ("generate", "generation.batch_size=3", lambda p: p["generation"]["batch_size"], 3),
])
def test_every_job_command_prints_its_dry_run_as_yaml_and_takes_set(tmp_path, write_job, smoke_job, capsys,
                                                                     command, item, read, value):
    job = _job_files(tmp_path, write_job, smoke_job)[command]
    assert main([command, str(job), "--dry-run", "--set", item]) == 0
    assert read(yaml.safe_load(capsys.readouterr().out)) == value


@pytest.mark.parametrize("command", ["distill", "sweep", "evaluate", "serve", "generate", "submit"])
def test_a_bad_job_file_or_set_key_exits_2_naming_file_and_key(tmp_path, write_job, smoke_job, capsys, command):
    job = _job_files(tmp_path, write_job, smoke_job)["distill" if command == "submit" else command]
    args = ["--working-dir", str(job.parent)] if command == "submit" else []
    assert main([command, str(job), *args, "--set", "surprise.key=1"]) == 2
    assert f"error: {job}: surprise: Extra inputs are not permitted (from --set surprise.key)" in capsys.readouterr().err
    raw = yaml.safe_load(job.read_text())
    bad = write_job({**raw, "typo_section": 1}, "bad.yaml")
    assert main([command, str(bad), *args]) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {bad}: typo_section: Extra inputs are not permitted"


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"loopfree {metadata.version('loopfree')}"


def test_env_with_nothing_set(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["env"]) == 0
    report = yaml.safe_load(capsys.readouterr().out)
    assert report["loopfree"] == metadata.version("loopfree") and report["python"] == sys.version.split()[0]
    assert set(report["packages"]) >= {"torch", "ray", "deepspeed", "diffusers", "mlflow"}
    assert report["devices"]["cpus"] >= 1 and isinstance(report["devices"]["cuda"], bool)
    assert report["ray"] == {"address": "not set (RAY_ADDRESS)"}
    assert report["mlflow"] == {"tracking_uri": "not set (MLFLOW_TRACKING_URI)"}


def test_env_reports_an_unreachable_cluster_and_server_without_credentials(monkeypatch, capsys, free_port):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:hunter2pass@127.0.0.1:{port}")
    assert main(["env", "--timeout", "1"]) == 0
    out = capsys.readouterr().out
    report = yaml.safe_load(out)
    assert report["ray"]["reachable"] is False and report["mlflow"]["reachable"] is False
    assert "hunter2pass" not in out


def test_submit_detects_the_kind_and_validates_relative_to_the_working_dir(tmp_path, write_job, smoke_job, capsys):
    kinds = {name: submit.detect_kind(ROOT / "jobs" / name) for name in
             ("smoke.yaml", "sweep_quickstart.yaml", "evaluate.yaml", "generate.yaml", "serve.yaml")}
    assert kinds == {"smoke.yaml": "distill", "sweep_quickstart.yaml": "sweep", "evaluate.yaml": "evaluate",
                     "generate.yaml": "generate", "serve.yaml": None}
    wd = tmp_path / "wd"
    (wd / "data").mkdir(parents=True)
    (wd / "data" / "prompts.tsv").write_text(Path(PROMPTS).read_text())
    # inputs relative (uploaded); the run's storage absolute: a relative one is refused (test_submission.py)
    write_job(smoke_job({"data": {"paths": ["data/prompts.tsv"]}, "storage": {"path": str(tmp_path / "runs")}}),
              "job.yaml", folder=wd)
    prompts = "sampling.prompts=[a cat, a dog, a car, a cup]"
    assert main(["submit", "job.yaml", "--working-dir", str(wd), "--dry-run", "--set", "training.max_steps=2",
                 "--set", prompts]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["training"]["max_steps"] == 2
    assert f"would submit: python -m loopfree_platform.cli distill job.yaml --set training.max_steps=2 --set '{prompts}'" in err
    assert main(["submit", str(wd / "job.yaml"), "--dry-run"]) == 2  # from here, data/prompts.tsv does not exist
    assert "data.paths[0]: 'data/prompts.tsv' does not exist" in capsys.readouterr().err
    write_job({"model": {"source": REGISTRY}}, "serve.yaml", folder=wd)
    assert main(["submit", "serve.yaml", "--working-dir", str(wd)]) == 2
    assert "give --kind" in capsys.readouterr().err


def test_quiet_console_sends_process_and_child_output_to_the_log(tmp_path):
    """What the process, its libraries and its child processes print goes to the log; the terminal keeps the bar
    (stderr) and the lines for the user (stdout)."""
    log = tmp_path / "run" / "driver.log"
    script = textwrap.dedent(f"""
        import logging, os, subprocess, sys, warnings
        from pathlib import Path
        from loopfree_platform.console import LogFile, Progress, quiet, say
        with quiet(LogFile(Path({str(log)!r})), title="test"), Progress("job", unit="step") as bar:
            print("python chatter"); logging.getLogger("ray").warning("ray chatter"); warnings.warn("a warning")
            subprocess.run(["echo", "child chatter"]); os.write(2, b"fd chatter\\n")
            bar.start(2); bar.to(2); bar.show(loss=0.5)
            say("for the user")
        print("summary")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)  # bytes: \r kept
    stdout, stderr = run.stdout.decode(), run.stderr.decode()
    assert run.returncode == 0, stderr
    assert stdout.splitlines() == ["for the user", "summary"]
    assert "2/2" in stderr and "loss=0.5" in stderr and stderr.count("\n") == 1  # the bar's \r-updates: one line
    text = log.read_text()
    assert all(s in text for s in ("loopfree test", "python chatter", "ray chatter", "a warning", "child chatter",
                                   "fd chatter", "for the user"))
    assert "chatter" not in stdout + stderr


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_distill_cli_prints_one_bar_and_a_summary_and_listens_on_loopback_only(tmp_path):
    """`loopfree distill jobs/smoke.yaml --set training.max_steps=2` from a shell that exports nothing for Ray:
    a few lines on the terminal, Ray's and the workers' chatter (start-up, Ray Train's reports) in
    <run dir>/driver.log, and every socket any of its processes listens on (Ray's, the workers', torch's
    rendezvous store) bound to loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with open(tmp_path / "out", "wb") as out_f, open(tmp_path / "err", "wb") as err_f:  # bytes: \r kept
        driver = subprocess.Popen([str(Path(sys.executable).parent / "loopfree"), "distill", "jobs/smoke.yaml",
                                   "--set", "training.max_steps=2", "--set", f"storage.path={tmp_path}",
                                   "--set", "tracking.enabled=false"], cwd=ROOT, env=env, stdout=out_f, stderr=err_f)
        try:
            seen = watch_tree(driver)
        finally:
            if driver.poll() is None:  # the test failed while watching
                driver.kill()
    stdout, stderr = (tmp_path / "out").read_bytes().decode(), (tmp_path / "err").read_bytes().decode()
    terminal = stdout + stderr
    print(terminal)
    assert driver.returncode == 0, terminal[-3000:]
    assert len({pid for pid, *_ in seen}) >= 4, seen  # GCS, raylet, agents, the training workers
    assert not beyond_loopback(seen), f"listening beyond loopback: {beyond_loopback(seen)}"
    assert terminal.count("\n") <= 15  # lines; a bar's \r-updates are one
    assert "distilled 2 steps" in stdout and f"log: {tmp_path / 'smoke-tiny' / 'driver.log'}" in stdout
    assert "2/2" in stderr and "loss_vsd=" in stderr
    assert "TrainingReport(" not in terminal and "RayTrainWorker" not in terminal
    log = (tmp_path / "smoke-tiny" / "driver.log").read_text()
    assert "Reporting training result" in log and "RayTrainWorker" in log

"""Node loss and a killed driver on a multi-node Ray cluster built on this machine: a head and three worker
nodes on 127.0.0.1, each `ray start` with its own temp dir and ports, run storage on the S3 endpoint, the
session's MLflow server. The job is sent with the README's two cluster lines as a user sends it: the plain
`ray job submit`, then `loopfree submit` (only the port, the storage path and the job's --set values differ).

One cluster, one job lineage, a few steps between faults: lose a worker node mid-run (the spare node takes
its place, as on a cluster with headroom or once an autoscaler or KubeRay has replaced the node), then SIGKILL
the driver, then resubmit. The run's step-execution log (every step rank 0 ran, per attempt) shows which steps
ran twice; the resumed run is one MLflow run with one model version that predicts. 3 to 4 minutes on 2 cores;
in the default run, and alone with `-m multinode` (README, "Quickstart").

Ray needs its multi-node mode for a second node; in that mode it addresses the GCS by this machine's own
interface address (packets to it never leave the machine), while every node is named 127.0.0.1.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import boto3
import psutil
import pytest
from loopfree_platform.distill.steplog import read_steps

from tests.cluster import BIN, MARKER, README_STORAGE, readme_line, repo_copy, shell, stop_processes, wait_http, wait_job_agent
from tests.executions import attempts, ran_again, same_results

pytestmark = [pytest.mark.timeout(600), pytest.mark.multinode]
BUCKET, RUN, STEPS = "loopfree-test", "cluster-faults/runs", 16
# Worker nodes have 2 CPUs and each training worker asks for 2, so the two workers land on different nodes
# (not on the 1-CPU head, which keeps a CPU for Ray Data's corpus tasks). A 10-prompt corpus: less to prepare.
# Its own registered model name: the MLflow server is shared with the other `ray start` test. Sample grids at
# steps 8 and 16. --verbose: the workers' output (the "resumed from" line) in the job's log, not only driver.log.
MODEL = "loopfree-tiue-node-loss"
JOB_ARGS = (f"--verbose --set name=node-loss --set scaling.cpus_per_worker=2 --set training.max_steps={STEPS} "
            "--set data.paths=[data/fashion_prompts.txt] --set data.format=text "
            f"--set sampling.every_steps=8 --set tracking.registered_model={MODEL}")
WORKER_NODES = ("a", "b", "c")  # two for the workers, one spare
RESUMED = re.compile(r"resumed from \S+checkpoint_(\d+) at step (\d+)")  # the workers' line (rank 0)
# The GCS declares a silent node dead after about 1.5 s instead of about 30 s (Ray's health-check settings).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                   "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, s3_endpoint, mlflow_server, free_port):
    tmp = tmp_path_factory.mktemp("nodes")
    root = f"/tmp/raymn{os.getpid()}"  # short: Ray's unix socket paths must stay under 108 bytes
    gcs_port, dash_port = free_port(), free_port()
    # Several nodes need Ray's multi-node mode ("0" refuses a second node); every node still takes 127.0.0.1
    # because each `ray start` names it.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_TRACKING_URI": mlflow_server, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **FAST_NODE_DEATH}

    def ray_start(name: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--temp-dir",
                                 f"{root}/{name}", "--dashboard-agent-listen-port", str(free_port()),
                                 "--disable-usage-stats", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def started(name: str, proc: subprocess.Popen) -> None:
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, f"ray start ({name}): {out[-3000:]}"

    try:
        started("head", ray_start("head", "--head", "--port", str(gcs_port), "--ray-client-server-port",
                                  str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                                  str(dash_port), "--num-cpus", "1"))
        workers = {n: ray_start(n, "--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "2") for n in WORKER_NODES}
        for name, proc in workers.items():  # started side by side
            started(name, proc)
        wait_http(f"{mlflow_server}/health")  # started by the session fixture, in parallel with the nodes
        wait_http(f"http://127.0.0.1:{dash_port}/api/version")
        wait_job_agent(f"http://127.0.0.1:{dash_port}")
        yield {"env": env, "address": f"http://127.0.0.1:{dash_port}", "mlflow": env["MLFLOW_TRACKING_URI"],
               "tmp": tmp, "root": root}
    finally:  # also when a node failed to start: nothing of this cluster outlives the module
        stop_processes(root, grace_s=0)  # each node's processes name its temp dir under root; nothing else
        # The job's driver names no temp dir: end any that is left (a failed test) by its command line.
        subprocess.run(["pkill", "-KILL", "-f", "cli distill jobs/smoke.yaml .*--set name=node-loss"])
        shutil.rmtree(root, ignore_errors=True)


def raylet(nodes, name: str) -> psutil.Process:
    temp_dir = f"{nodes['root']}/{name}/"
    return next(p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "raylet" and temp_dir in " ".join(p.info["cmdline"] or []))


def train_workers(node: psutil.Process) -> list[psutil.Process]:
    return [p for p in node.children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]


def lose_node(nodes, name: str) -> int:
    """The node's machine is gone: SIGKILL its raylet, agents and workers at once. Returns how many training
    workers it held."""
    node = raylet(nodes, name)
    tree = [node, *node.children(recursive=True)]
    held = len(train_workers(node))
    for proc in tree:
        proc.kill()
    psutil.wait_procs(tree, timeout=10)
    return held


def checkpoints(s3) -> list[int]:
    """Steps of the checkpoints in the bucket that have their state.json (rank 0's last file)."""
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{RUN}/node-loss/").get("Contents", [])
    return sorted(int(m[1]) for o in objects if (m := re.search(r"checkpoint_(\d+)/state\.json$", o["Key"])))


def reported_steps(s3) -> list[int]:
    """Steps whose report the driver has processed (its metrics.jsonl rows, in file order): a checkpoint of
    such a step is registered with Ray Train, so a restarted worker group gets it."""
    try:
        body = s3.get_object(Bucket=BUCKET, Key=f"{RUN}/node-loss/metrics.jsonl")["Body"].read().decode()
    except s3.exceptions.NoSuchKey:
        return []
    return [json.loads(line)["step"] for line in body.splitlines()]


def wait_for(predicate, what: str, logs, timeout: float = 240):
    """predicate()'s first true value; on timeout, fail with the job's log tail."""
    deadline = time.time() + timeout
    while not (value := predicate()):
        assert time.time() < deadline, f"timed out waiting for {what}; the job's log ends:\n{logs()[-4000:]}"
        time.sleep(0.5)
    return value


def registered(s3) -> int:
    """The newest checkpoint registered with Ray Train: Ray registers a checkpoint (and stores that in the run)
    before the driver's callbacks see its report, so one whose metrics row exists is registered."""
    return max(set(checkpoints(s3)) & set(reported_steps(s3)), default=0)


def test_a_lost_node_and_a_killed_driver_resume_from_the_last_s3_checkpoint_with_every_step_once(nodes, s3_endpoint):
    from ray.job_submission import JobStatus, JobSubmissionClient

    repo = repo_copy(nodes["tmp"] / "repo")  # its platform/ prints MARKER: the job runs the uploaded code
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    jobs = JobSubmissionClient(nodes["address"])
    run_dir = f"s3://{BUCKET}/{RUN}/node-loss"

    def readme(word: str) -> str:
        """The README's line, with this cluster's port, the run in the bucket and the job's settings."""
        line = readme_line(word, int(nodes["address"].rsplit(":", 1)[1]))
        assert README_STORAGE in line, line
        return f"{line.replace(README_STORAGE, f'storage.path=s3://{BUCKET}/{RUN}')} {JOB_ARGS}"

    t0 = time.time()
    first_out = nodes["tmp"] / "first.out"
    first = shell(readme("ray job submit"), repo, nodes["env"], first_out)  # follows the job's log to its end
    sid = wait_for(lambda: re.search(r"Job '(\S+)' submitted successfully", first_out.read_text()),
                   "the plain submission", lambda: first_out.read_text(), 120)[1]

    def logs() -> str:
        return jobs.get_job_logs(sid)

    # 1. Lose a worker node once a checkpoint is registered and a step after it ran (a node lost between a
    # checkpoint's upload and its registration restarts from the one before: Ray Train's rule). The two workers
    # are on two nodes.
    def past_a_registered_checkpoint() -> bool:
        done = registered(s3)
        return done > 0 and max((r["step"] for r in read_steps(run_dir, s3_endpoint)), default=0) > done

    wait_for(past_a_registered_checkpoint, "a step after a registered checkpoint", logs)
    holding = {n: len(train_workers(raylet(nodes, n))) for n in WORKER_NODES}
    assert sorted(holding.values()) == [0, 1, 1], holding
    print(f"submission to a step after a registered checkpoint: {time.time() - t0:.0f} s", flush=True)
    before_loss = registered(s3)
    assert lose_node(nodes, next(n for n, held in holding.items() if held)) == 1
    resumed = wait_for(lambda: RESUMED.search(logs()),
                       "the worker group to resume after the node loss", logs)
    assert int(resumed[2]) >= before_loss
    print(f"then to the restarted group's resume: {time.time() - t0:.0f} s", flush=True)
    assert jobs.get_job_status(sid) == JobStatus.RUNNING  # the same submission, same driver, goes on

    # 2. SIGKILL the driver once a checkpoint written after the restart exists.
    wait_for(lambda: checkpoints(s3)[-1] >= max(int(resumed[2]) + 2, STEPS // 2), "a checkpoint after the restart",
             logs)
    os.kill(int(jobs.get_job_info(sid).driver_info.pid), signal.SIGKILL)
    wait_for(lambda: jobs.get_job_status(sid) in (JobStatus.FAILED, JobStatus.STOPPED), "the killed job to end", logs, 60)
    at_kill, registered_at_kill = checkpoints(s3)[-1], registered(s3)  # the driver is gone: nothing registers now
    print(f"then to the driver killed: {time.time() - t0:.0f} s", flush=True)
    assert at_kill < STEPS, "the run finished before its driver was killed: give it more steps"

    first.wait(timeout=60)  # the plain submission's log ends with its job
    assert MARKER in first_out.read_text(), first_out.read_text()[-3000:]

    # 3. Resubmit with `loopfree submit`: it resumes from the newest checkpoint and finishes the run.
    second = shell(readme("loopfree submit"), repo, nodes["env"])
    out = second.communicate(timeout=500)[0]
    assert second.returncode == 0 and "ended: SUCCEEDED" in out and MARKER in out, out[-3000:]
    print(f"then the resubmission to SUCCEEDED: {time.time() - t0:.0f} s", flush=True)
    resumed_again = RESUMED.search(out)
    assert resumed_again and int(resumed_again[2]) >= at_kill - 2, out[-3000:]

    # Every execution, never deduplicated: three attempts (the first group, the group restarted after the node
    # loss, the resubmission), each running on from the newest checkpoint registered when its fault came, so the
    # steps that ran twice are exactly those an attempt ran after the checkpoint the next one resumed from.
    executions = read_steps(run_dir, s3_endpoint)
    by_attempt = attempts(executions)
    assert sorted(by_attempt) == [0, 1, 2], by_attempt
    (_, ran0), (after_loss, ran1), (after_kill, ran2) = by_attempt[0], by_attempt[1], by_attempt[2]
    assert (after_loss, after_kill) == (int(resumed[2]), int(resumed_again[2]))  # the workers' "resumed from" lines
    assert before_loss <= after_loss <= ran0[-1] and registered_at_kill <= after_kill <= min(at_kill, ran1[-1])
    assert ran0 == list(range(1, ran0[-1] + 1)) and ran1 == list(range(after_loss + 1, ran1[-1] + 1))
    assert ran2 == list(range(after_kill + 1, STEPS + 1))
    assert ran_again(executions) == sorted({*range(after_loss + 1, ran0[-1] + 1), *range(after_kill + 1, ran1[-1] + 1)})
    same_results(executions)  # a step run again had the same results
    print(f"steps run: 1-{ran0[-1]}, from checkpoint {after_loss}: {ran1[0]}-{ran1[-1]}, from checkpoint "
          f"{after_kill}: {ran2[0]}-{ran2[-1]}; run twice: {ran_again(executions)}", flush=True)

    assert reported_steps(s3) == list(range(1, STEPS + 1))  # each step's result recorded once
    run_id = s3.get_object(Bucket=BUCKET, Key=f"{RUN}/node-loss/mlflow_run_id")["Body"].read().decode().strip()
    tracked_run(nodes, run_id, first_out.read_text() + out)


def tracked_run(nodes, run_id: str, outputs: str) -> None:
    """The run as MLflow shows it after two submissions and three attempts: one run (FINISHED), params, every
    step's metrics once, one-off values as tags, captioned grids, no credential anywhere, one model version
    under the candidate alias that predicts."""
    import mlflow
    import pandas as pd
    import PIL.Image
    from loopfree_platform.tracking import fluent_tracking_uri
    from mlflow.tracking import MlflowClient

    client = MlflowClient(nodes["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("loopfree").experiment_id],
                              filter_string="tags.`loopfree.job` = 'node-loss'")
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"  # one run, resumed twice
    run = runs[0]
    assert sorted({m.step for m in client.get_metric_history(run_id, "train/loss_vsd")}) == list(range(1, STEPS + 1))
    assert run.data.params["scaling.num_workers"] == "2" and run.data.params["method.lambda_kl"] == "0.1"
    for key in ("train/loss_kl", "train/loss_fake_score", "train/grad_norm_student", "train/lr_student", "perf/samples_per_s"):
        assert len(client.get_metric_history(run_id, key)) >= STEPS, key
    assert "perf/first_batch_s" not in run.data.metrics and "perf.first_batch_s" in run.data.tags
    # Credentials in the environment never reach MLflow params, tags, the logged job or the job's logs.
    secret = nodes["env"]["AWS_SECRET_ACCESS_KEY"]
    logged_job = Path(client.download_artifacts(run_id, "job.resolved.yaml")).read_text()
    assert secret not in str(run.data.params) + str(run.data.tags) + logged_job + outputs
    grids = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert len(grids) >= 2 and PIL.Image.open(client.download_artifacts(run_id, grids[0])).height >= 128
    assert [v.run_id for v in client.search_model_versions(f"name = '{MODEL}'")] == [run_id]
    assert client.get_model_version_by_alias(MODEL, "candidate").run_id == run_id
    with fluent_tracking_uri(nodes["mlflow"]):  # must not leak into later tests once this server is gone
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@candidate")
    images = model.predict(pd.DataFrame({"prompt": ["a cat", "a dog"], "seed": [0, 1]}))
    assert len(images) == 2 and images["image_png_base64"].str.len().min() > 100

"""The /generate body rules (pure) and the serve/generate job schemas: every bad input names its field."""

import json
from pathlib import Path

import pytest
import yaml
from loopfree_platform.jobfile import JobError
from loopfree_platform.serve.app import RequestError, Traffic, parse_request, run_isolated, visible
from loopfree_platform.serve.guard import CALLBACK, CALLBACK_ENV, Limits, proxy_env
from loopfree_platform.serve.job import ServeApp, load_generate_job, load_serve_job
from loopfree_platform.serve.monitor import traffic_line

ROOT = Path(__file__).resolve().parents[3]


def parse(body, max_prompts=4, max_chars=20):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, max_prompts, max_chars)


def test_a_good_request_parses_with_defaults():
    assert parse({"prompts": ["a cat"]}) == (["a cat"], None, "base64")
    assert parse({"prompts": ["a", "b"], "seeds": [0, 2**32 - 1], "format": "png"}) == (["a", "b"], [0, 2**32 - 1], "png")


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ([1, 2], 400, "JSON object"),
    ({}, 422, "prompts: must be a non-empty list"),
    ({"prompts": []}, 422, "prompts: must be a non-empty list"),
    ({"prompts": "a cat"}, 422, "prompts: must be a non-empty list"),
    ({"prompts": ["a", 3]}, 422, "prompts[1]: must be a string, got int"),
    ({"prompts": [None]}, 422, "prompts[0]: must be a string"),
    ({"prompts": ["a"] * 5}, 413, "at most 4 per request"),
    ({"prompts": ["x" * 21]}, 422, "prompts[0]: 21 characters, at most 20"),
    ({"prompts": ["a"], "seeds": [-1]}, 422, "seeds[0]: must be an integer"),
    ({"prompts": ["a"], "seeds": [1.5]}, 422, "seeds[0]: must be an integer"),
    ({"prompts": ["a"], "seeds": ["1"]}, 422, "seeds[0]"),
    ({"prompts": ["a"], "seeds": [True]}, 422, "seeds[0]"),
    ({"prompts": ["a"], "seeds": [2**32]}, 422, "seeds[0]"),  # would draw seed 0's noise
    ({"prompts": ["a", "b"], "seeds": [1]}, 422, "seeds: must be a list with one integer per prompt (2)"),
    ({"prompts": ["a"], "seeds": 1}, 422, "seeds: must be a list"),
    ({"prompts": ["a"], "format": "jpeg"}, 422, "format: must be one of"),
    ({"prompts": ["a"], "steps": 4}, 422, "unknown field(s) ['steps']"),
    ({"prompts": [""]}, 422, "prompts[0]: no visible character"),
    ({"prompts": ["a", " \t\n"]}, 422, "prompts[1]: no visible character"),
    ({"prompts": ["\u200b\u200c\u200d\u2060\ufeff"]}, 422, "prompts[0]: no visible character"),  # zero-width only
    ({"prompts": ["a", "\u3164\u2800 \x00\u00ad"]}, 422, "prompts[1]: no visible character"),  # blank letters, NUL, soft hyphen
    (b'{"prompts": ["a bag \\ud83d"]}', 422, "prompts[0]: not valid Unicode"),
    (b'{"prompts": ["a"], "seeds": [' + b"9" * 5000 + b"]}", 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
])
def test_bad_requests_get_a_status_and_a_message_naming_the_field(body, status, words):
    with pytest.raises(RequestError) as err:
        parse(body)
    assert err.value.status == status
    assert words in str(err.value)


def test_serve_job_validation_names_the_key(tmp_path, tiny_pipeline_dir, write_job):
    good = {"model": {"source": str(tiny_pipeline_dir)}, "serving": {"max_batch_size": 4}}
    assert load_serve_job(write_job(good)).serving.max_batch_size == 4
    for bad, key in [({"model": {"source": str(tmp_path / "nope")}}, "model.source"),
                     ({"model": {"source": "models:/x"}}, "model.source"),
                     ({**good, "serving": {"max_batch_size": 0}}, "serving.max_batch_size"),
                     ({**good, "serving": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "serving.autoscaling"),
                     ({**good, "http": {"port": 70000}}, "http.port"),
                     ({**good, "http": {"request_timeout_s": 0}}, "http.request_timeout_s"),
                     ({**good, "http": {"max_header_bytes": 100}}, "http.max_header_bytes"),
                     ({**good, "serving": {"max_queued_requests": 0}}, "serving.max_queued_requests"),
                     ({**good, "auth": {"token": "x"}}, "auth.token")]:
        with pytest.raises(JobError) as err:
            load_serve_job(write_job(bad))
        assert key in str(err.value), (key, str(err.value))


def test_generate_job_validation(tmp_path, tiny_pipeline_dir, write_job):
    good = {"model": {"source": str(tiny_pipeline_dir)}, "prompts": {"path": str(ROOT / "data/PartiPrompts.tsv")},
            "output": {"root": str(tmp_path / "out")}}
    assert load_generate_job(write_job(good)).generation.batch_size == 8
    for bad, key in [({**good, "prompts": {"path": str(tmp_path / "missing.txt")}}, "prompts.path"),
                     ({**good, "output": {"root": "s3://"}}, "output.root"),
                     ({**good, "generation": {"replicas": 0}}, "generation.replicas"),
                     ({**good, "prompts": {"path": "x", "format": "csv"}}, "prompts.format")]:
        with pytest.raises(JobError) as err:
            load_generate_job(write_job(bad))
        assert key in str(err.value), (key, str(err.value))


def test_the_shipped_serve_configs_validate():
    """platform/serve_config.yaml (serve deploy) and the RayService carry args build_app accepts."""
    config = yaml.safe_load((ROOT / "platform/serve_config.yaml").read_text())
    args = config["applications"][0]["args"]
    assert config["applications"][0]["import_path"] == "loopfree_platform.serve.app:build_app"
    assert ServeApp.model_validate(args).auth.required
    service = yaml.safe_load((ROOT / "infra/kuberay/rayservice-serve.yaml").read_text())
    service_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeApp.model_validate(service_config["applications"][0]["args"])
    for shipped in (config, service_config):  # both install the proxy guard with settings it can read
        env = shipped["controller_options"]["runtime_env"]["env_vars"]
        assert env[CALLBACK_ENV] == CALLBACK
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            assert Limits.from_env() == Limits()  # the documented defaults, written out


def test_visible_characters_and_the_proxy_settings_round_trip(monkeypatch):
    assert not any(visible(t) for t in ["", " \t", "\u200b\u200c\u200d\u2060\ufeff", "\u3164", "\ufe0f", "\x00\x7f"])
    assert all(visible(t) for t in ["a", "\u00e0", "\U0001f45c", "\u9774", "\u200ba", "\u0301"])
    limits = Limits(request_timeout_s=2.5, max_header_bytes=4096, max_body_bytes=2048)
    for key, value in proxy_env(limits).items():
        monkeypatch.setenv(key, value)
    assert Limits.from_env() == limits


def test_traffic_totals_p95_and_the_console_line():
    traffic = Traffic()
    for i in range(20):
        traffic.record(200, 2, latency_s=0.1 * (i + 1))
    traffic.record(422, 0, 0.01)
    traffic.record(500, 0, 0.01)
    now = traffic.summary(window_s=60)
    assert (now["requests"], now["images"], now["client_errors"], now["server_errors"]) == (22, 40, 1, 1)
    assert now["p95_s"] == pytest.approx(1.9)
    before = {"requests": 2, "images": 0, "client_errors": 0, "server_errors": 0, "p95_s": None}
    assert traffic_line(now, before, elapsed_s=10) == "22 requests (+20), 4.00 images/s, p95 1.90 s, errors 2 (4xx 1, 5xx 1)"


def test_shipped_job_files_parse_to_their_schemas():
    """jobs/serve.yaml and jobs/generate.yaml are valid apart from the model they name (made by the quickstart)."""
    from loopfree_platform.serve.job import GenerateJob, ServeJob

    for name, schema in (("serve.yaml", ServeJob), ("generate.yaml", GenerateJob)):
        raw = yaml.safe_load((ROOT / "jobs" / name).read_text())
        assert raw["model"]["source"] == "runs/quickstart-fashion/export"
        raw["model"]["source"] = "models:/loopfree-tiue@candidate"  # statically valid without the export
        schema.model_validate(raw)


def test_cli_validates_serve_and_generate_jobs_before_any_cluster_work(tmp_path, tiny_pipeline_dir, capsys, write_job):
    from loopfree_platform.cli import main

    serve_job = write_job({"model": {"source": str(tiny_pipeline_dir)}})
    assert main(["serve", str(serve_job), "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["serving"]["max_batch_size"] == 8
    bad = write_job({"model": {"source": str(tmp_path / "missing")}, "prompts": {"path": "x"},
                     "output": {"root": str(tmp_path)}}, "bad.yaml")
    for command in ("serve", "generate"):
        assert main([command, str(bad)]) == 2
        assert "model.source" in capsys.readouterr().err


def test_any_unicode_prompt_is_accepted():
    prompts = ["un sac \u00e0 main \U0001f45c", "\u9774\u5b50"]
    assert parse({"prompts": prompts})[0] == prompts


def test_a_failing_item_fails_alone_and_the_rest_of_its_batch_is_served():
    calls = []

    def run(prompts, seeds):
        calls.append(list(prompts))
        if "bad" in prompts:
            raise ValueError("cannot tokenize")
        return [f"png:{p}:{s}" for p, s in zip(prompts, seeds)]

    out = run_isolated(run, ["a", "bad", "c"], [1, 2, 3])
    assert out[0] == "png:a:1" and out[2] == "png:c:3" and isinstance(out[1], ValueError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # the batch once, then each item alone
    assert run_isolated(run, ["a", "c"], [1, 3]) == ["png:a:1", "png:c:3"] and calls[-1] == ["a", "c"]


def test_a_batch_generation_seed_of_2_to_the_32_is_refused_naming_generation_seed():
    from loopfree_platform.serve.job import Generation
    from pydantic import ValidationError

    assert Generation(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValidationError, match="seed"):
        Generation(seed=2**32)  # torch would draw seed 0's noise for it

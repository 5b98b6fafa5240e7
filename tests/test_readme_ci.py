"""CI runs what a newcomer runs: `.ci/run` is the README's test command and nothing else (no preparatory
step such as installing a dataset package), so a green CI means the README's command passes on a fresh clone."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1, f"README.md should show one test command, found {commands}"
    return commands[0]


def ci_steps() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert lines[0].startswith("#!"), "the CI script starts with a shebang"
    return [line.strip() for line in lines[1:] if line.strip() and not line.strip().startswith("#")]


def test_readme_test_command_sets_up_and_runs_pytest():
    command = readme_test_command()
    assert command.startswith("python3 -m venv .venv && ") and command.endswith("-m pytest -q")
    assert "apt" not in shlex.split(command)


def test_ci_runs_exactly_the_readme_test_command():
    steps = ci_steps()
    assert steps[0] == "set -euo pipefail", steps
    assert steps[-1] == readme_test_command(), f".ci/run's last step differs from README.md's test command: {steps[-1]!r}"
    extra = [s for s in steps[1:-1] if not re.fullmatch(r"cd [^;&|]+", s)]
    assert not extra, f".ci/run does more than a newcomer would (only `set -euo pipefail` and `cd` allowed): {extra}"

"""Architecture rules from DESIGN.md, as tests."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"ray", "deepspeed", "mlflow", "boto3", "botocore", "loopfree_platform"}


def test_platform_folder_is_not_a_package():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_import_platform_resolves_to_the_standard_library():
    code = "import platform, sysconfig; print(platform.__file__); print(sysconfig.get_paths()['stdlib'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    module_file, stdlib = out.split("\n")[:2]
    assert Path(module_file).resolve().is_relative_to(Path(stdlib).resolve()), module_file


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_loopfree_source_imports_no_platform_packages():
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & FORBIDDEN) for p in (ROOT / "loopfree").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_loopfree_loads_no_platform_packages():
    code = "import sys, loopfree, loopfree.images; print(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # accelerate (a diffusers dependency) imports boto3 for its SageMaker config, so only the heavy
    # platform packages are checked transitively; the source rule above covers boto3 for our code.
    assert not set(out.split()) & (FORBIDDEN - {"boto3", "botocore"})


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme.split("## Quickstart")[1].split("\n## ")[0], re.DOTALL)
    lines = [line for block in commands for line in block.strip().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2, lines  # exactly two commands: the main job and the tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[1] in ci.splitlines()


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "loopfree", "platform", "tests", "benchmarks", "examples"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""Architecture rules from docs/architecture.md, as tests."""

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
    code = ("import sys, loopfree, loopfree.images, loopfree.pipeline, loopfree.distiller; "
            "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # accelerate (a diffusers dependency) imports boto3 for its SageMaker config, so only the heavy
    # platform packages are checked transitively; the source rule above covers boto3 for our code.
    assert not set(out.split()) & (FORBIDDEN - {"boto3", "botocore"})


def test_validating_a_job_loads_neither_diffusers_nor_deepspeed_and_loopfree_names_load_on_use():
    """A job's validation (the CLI's opening, the driver, `--dry-run`) imports loopfree.config; the package's
    names are loaded on first use, so that path pays for neither diffusers nor deepspeed."""
    code = ("import sys, tempfile, pathlib; from loopfree_platform.distill.job import load_job; "
            "load_job('jobs/quickstart.yaml'); student = pathlib.Path(tempfile.mkdtemp()); "
            "(student / 'unet').mkdir(); (student / 'unet' / 'config.json').write_text('{}'); "
            "import yaml; job = yaml.safe_load(open('jobs/quickstart.yaml')); job['model']['student_dir'] = str(student); "
            "(student / 'k2.yaml').write_text(yaml.safe_dump(job)); load_job(student / 'k2.yaml'); "  # K transfer too
            "heavy = sorted({'diffusers', 'transformers', 'deepspeed', 'peft'} & set(sys.modules)); "
            "import loopfree; pipe = loopfree.TiUEPipeline; "
            "print(heavy, pipe.__module__, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "[] loopfree.pipeline True", out


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


# -- the platform's layout: products (distill, serve, evaluate) over shared top-level modules -------------
PLATFORM = ROOT / "platform" / "loopfree_platform"
PRODUCTS = ("distill", "serve", "evaluate")
# the top-level modules that dispatch to every product: the command's table, and what each command runs
ENTRY_POINTS = {"loopfree_platform.cli", "loopfree_platform.commands"}


def module_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, from the source (imports inside functions too:
    a lazy import is still a dependency). `from pkg import name` counts as importing pkg.name when that is
    a module, else pkg itself."""
    files = {}
    for path in package_dir.rglob("*.py"):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                origin = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    origin = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
                targets += [f"{origin}.{alias.name}" for alias in node.names]
        graph[module] = {t for t in map(known, targets) if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _product(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PRODUCTS else None


def layout_violations(graph: dict[str, set[str]]) -> list[str]:
    """A product imports no other product; a shared top-level module imports no product (only the CLI does)."""
    found = []
    for module, deps in sorted(graph.items()):
        for dep in sorted(deps):
            mine, theirs = _product(module), _product(dep)
            if theirs and mine and mine != theirs:
                found.append(f"{module} (product {mine}) imports {dep} (product {theirs})")
            elif theirs and not mine and module not in ENTRY_POINTS:
                found.append(f"shared module {module} imports {dep} (product {theirs})")
    return found


def test_the_platform_is_grouped_by_product():
    for product in PRODUCTS:
        assert (PLATFORM / product / "__init__.py").is_file(), product
    graph = module_graph(PLATFORM, "loopfree_platform")
    # the builder sees real imports: module-level, lazy (inside functions) and `from package import module`
    assert "loopfree_platform.runtime" in graph["loopfree_platform.serve.app"]
    assert "loopfree_platform.evaluate.driver" in graph["loopfree_platform.commands"]
    assert "loopfree_platform.distill.checkpoint" in graph["loopfree_platform.distill.train"]


def test_the_platform_has_no_import_cycles():
    graph = module_graph(PLATFORM, "loopfree_platform")
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_product_imports_another_product():
    assert layout_violations(module_graph(PLATFORM, "loopfree_platform")) == []


def test_the_rules_catch_a_cycle_and_a_cross_product_import(tmp_path):
    """The checks above can fail: a synthetic package with a lazy-import cycle (relative imports too) and a
    product that imports another product's driver."""
    files = {
        "__init__.py": "",
        "storage.py": "def f():\n    from pkg.evaluate import report\n",  # shared -> product
        "serve/__init__.py": "",
        "serve/app.py": "from pkg.distill.driver import ensure_ray\n",  # product -> another product
        "distill/__init__.py": "",
        "distill/driver.py": "from . import train\n",
        "distill/train.py": "def g():\n    from .driver import ensure_ray\n",  # cycle through a lazy import
        "evaluate/__init__.py": "",
        "evaluate/report.py": "from pkg import storage\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = module_graph(tmp_path, "pkg")
    assert graph["pkg.distill.driver"] == {"pkg.distill.train"} and graph["pkg.evaluate.report"] == {"pkg.storage"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) in ({"pkg.distill.driver", "pkg.distill.train"},
                                                {"pkg.storage", "pkg.evaluate.report"})
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layout_violations(graph) == [
        "pkg.serve.app (product serve) imports pkg.distill.driver (product distill)",
        "shared module pkg.storage imports pkg.evaluate.report (product evaluate)",
    ]


def test_every_platform_package_is_packaged():
    """pyproject.toml lists packages explicitly (platform/ is not a package): a new product folder must be added."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(["loopfree_platform", *p.parent.relative_to(PLATFORM).parts]) for p in PLATFORM.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_mlflow_is_imported_by_one_platform_module():
    """Every MLflow call of distill, sweep, evaluate and the model registry goes through loopfree_platform.tracking
    (its registered model's pyfunc included); the rest of the platform imports that module, never mlflow."""
    importers = sorted(str(p.relative_to(PLATFORM)) for p in PLATFORM.rglob("*.py") if "mlflow" in _imported_roots(p))
    assert importers == ["tracking.py"]


def _imported_products(path: Path) -> set[str]:
    """The products (distill, serve, evaluate) whose modules a file imports, by `loopfree_platform.<product>`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("loopfree_platform.") and len(n.split(".")) > 2}
    return found & set(PRODUCTS)


def test_the_platform_tests_mirror_the_products():
    """tests/loopfree_platform/<product>/ exists for each product, and its tests import no other product's modules
    (tests of shared modules sit at tests/loopfree_platform/ itself)."""
    tests = ROOT / "tests" / "loopfree_platform"
    for product in PRODUCTS:
        assert (PLATFORM / product / "__init__.py").is_file() and list((tests / product).glob("test_*.py")), product
        strays = {p.name: _imported_products(p) - {product} for p in (tests / product).glob("test_*.py")}
        assert not {k: v for k, v in strays.items() if v}, (product, strays)

"""The code's walls, checked: imports run one way, facts never import an
executor, no module outside reconcile/stages branches on a stage's name, and
the plan path does not load the apply machinery."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "reconcile"
KINDS = {"deep_gemm", "moe_tune", "flashinfer", "inductor", "custom"}


def modules() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, top_level_only: bool) -> set:
    """Modules of the package that `name` imports."""
    mods = modules()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if target in mods:
                found.add(target)
            for alias in node.names:
                if f"{target}.{alias.name}" in mods:
                    found.add(f"{target}.{alias.name}")
    return found


def test_module_level_imports_have_no_circle():
    graph = {name: imports(name, path, True) for name, path in modules().items()}
    state: dict = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            assert state.get(dep) != "open", "import circle: " + " → ".join(stack[stack.index(dep):] + [dep])
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_facts_import_no_executor_planner_or_diff():
    for name, path in modules().items():
        room = name.split(".")[-1]
        if room.startswith("facts_"):
            bad = {m for m in imports(name, path, False)
                   if m.split(".")[-1].startswith(("exec_", "diff_", "plan")) or ".stages" in m}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_diffs_and_stage_planning_import_no_executor():
    pure = [n for n in modules() if n.split(".")[-1].startswith("diff_")] + [
        "reconcile.stages.diff", "reconcile.stages.checks", "reconcile.stages.plan", "reconcile.plan",
        "reconcile.plan_model"]
    for name in pure:
        bad = {m for m in imports(name, modules()[name], False) if m.split(".")[-1].startswith("exec_")
               or m.endswith(("stages.runner", "stages.executor"))}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_module_outside_stages_branches_on_a_stage_name():
    offenders = []
    for name, path in modules().items():
        if name.startswith("reconcile.stages"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for operand in [node.left, *node.comparators]:
                    if isinstance(operand, ast.Constant) and operand.value in KINDS:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith" and any(
                    isinstance(a, ast.Constant) and str(a.value).startswith("custom") for a in node.args):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_plan_path_loads_no_apply_machinery():
    code = ("import sys; import reconcile.cli, reconcile.plan, reconcile.facts_host; "
            "bad = [m for m in sys.modules if m.startswith(('reconcile.exec_', 'reconcile.stages.runner', "
            "'reconcile.stages.executor', 'docker', 'httpx', 'psutil'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

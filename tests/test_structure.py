"""The package's shape, checked: no import cycle among its modules, counting the imports deferred into
functions (the tree before the regroup had one: attack.confirm -> attack.verify -> attack.confirm), and no
module over 400 lines."""

from __future__ import annotations

import ast

from conftest import ROOT

PACKAGE = ROOT / "dedup"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # deferred imports inside functions too
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = module_imports()
    assert len(graph) > 50  # the walk saw the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_400_lines():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def fast_tier_cli_commands() -> set[str]:
    """The commands that tests outside the slow tier run through `run_cli`: the first argument of each call,
    where it is written out, in every test function not marked slow (and in the helpers they share)."""
    commands: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any("slow" in ast.unparse(d) for d in node.decorator_list):
                continue
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id == "run_cli"
                    and call.args
                    and isinstance(call.args[0], ast.Constant)
                ):
                    commands.add(str(call.args[0].value))
    return commands


def test_the_fast_tier_runs_every_command():
    """`make test-fast` (the tests not marked slow) runs every command of the CLI at least once."""
    from dedup.cli import app

    every = {command.name for command in app.registered_commands}
    assert every - fast_tier_cli_commands() == set()


STAGE_OF = {  # each module of dedup/stages and the stage it is a part of
    "embed": "embed",
    "find": "find",
    "find_units": "find",
    "select": "select",
    "labelled": "select",
    "captions": "select",
    "write": "write",
    "write_plan": "write",
    "summary": "write",
    "purge": "purge",
    "increment": "add",
}


def test_no_stage_imports_another_stage():
    """A stage's modules import only their own stage's: what two stages share lives in search/ or io/, and the
    runner composes the stages."""
    graph = module_imports()
    stage_modules = {name.rsplit(".", 1)[1] for name in graph if name.startswith("dedup.stages.")}
    assert stage_modules == set(STAGE_OF), "a new module of dedup/stages: name its stage in STAGE_OF"
    crossings = [
        f"{name} -> {target}"
        for name, imported in graph.items()
        if name.startswith("dedup.stages.")
        for target in imported
        if target.startswith("dedup.stages.") and STAGE_OF[target.split(".")[2]] != STAGE_OF[name.split(".")[2]]
    ]
    assert crossings == []


def test_architecture_doc_names_every_package_folder():
    """docs/architecture.md draws the tree as it is: every package folder of dedup/ is named there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert [name for name in folders if f"{name}/" not in text] == []


def run_folder_file_names() -> set[str]:
    """The names of the files RunFolder and find's UnitsFolder place (their properties), and of the records
    kept beside the shards the pipeline writes and plants."""
    from pathlib import Path

    from dedup.io import runfolder

    names: set[str] = set()
    for folder in (runfolder.RunFolder("/R"), runfolder.UnitsFolder(Path("/R"))):
        for attribute, member in vars(type(folder)).items():
            if isinstance(member, property) and isinstance(path := getattr(folder, attribute), Path) and path.suffix:
                names.add(path.name)
    names |= {runfolder.removals_record(Path("/R")).name, runfolder.planted_record(Path("/R")).name}
    return names


def test_no_run_folder_file_name_is_spelled_outside_runfolder():
    """A run folder's file names are spelled once, in dedup/io/runfolder.py: a string constant equal to one of
    them (or ending in '/name') anywhere else in the package is a second spelling."""
    names = run_folder_file_names()
    assert {"pairs.parquet", "manifest.parquet", "plans.json", "planted.json", "removals.json"} <= names
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "io/runfolder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in names or any(node.value.endswith(f"/{name}") for name in names):
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert spelled == [], "\n".join(spelled)


def test_settings_sit_below_io_and_the_engine():
    """settings/ is data: it imports neither dedup.io nor dedup.engine (the factories that build readers and
    engines from settings live beside what they build)."""
    upward = [
        f"{name} -> {target}"
        for name, imported in module_imports().items()
        if name.startswith("dedup.settings")
        for target in imported
        if target.startswith(("dedup.io", "dedup.engine", "dedup.stages", "dedup.search"))
    ]
    assert upward == []

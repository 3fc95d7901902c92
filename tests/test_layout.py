"""The layout shows the processes: what the app imports, where Lua runs, how big a module grows.

These read the source and the import graph; none needs a database or Redis.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flashsale"
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "devtools").rglob("*.py"))


def test_the_top_level_holds_at_most_a_dozen_modules():
    modules = [path.name for path in PACKAGE.glob("*.py")]
    assert len(modules) <= 12, sorted(modules)


def test_no_module_grows_past_four_hundred_lines():
    long = {str(path.relative_to(ROOT)): n for path in SOURCES
            if (n := len(path.read_text().splitlines())) > 400}
    assert not long


def test_every_module_says_in_its_first_line_what_it_holds():
    for path in SOURCES:
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and docstring.strip(), f"{path.relative_to(ROOT)} has no docstring"


def test_lua_runs_one_way_by_sha_never_sent_as_text_per_call():
    """Scripts are lua.Script constants: no EVAL of a script's text, no second registration scheme."""
    for path in SOURCES:
        text = path.read_text()
        for banned in (".eval(", "register_script(", "Script(None"):
            assert banned not in text, f"{path.relative_to(ROOT)} uses {banned}"


def test_nothing_reads_flask_limiters_private_names():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        private = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Name) and node.value.id == "limiter"
                   and node.attr.startswith("_")]
        assert not private, f"{path.relative_to(ROOT)} reads limiter.{private}"


def test_the_domain_never_touches_a_request_or_a_blueprint():
    """flashsale/inventory takes plain arguments: no flask request/session/g, no web or blueprint code."""
    outside = ("flashsale.web", "flashsale.gates", "flashsale.api", "flashsale.shop", "flashsale.admin",
               "flashsale.worker", "flashsale.simulate", "flashsale.checkout", "devtools")
    for path in sorted((PACKAGE / "inventory").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, "flashsale.inventory")
                names = {alias.name for alias in node.names}
                assert not (target == "flask" and names & {"request", "session", "g"}), path.name
                assert not target.startswith(outside), f"{path.name} imports {target}"


def test_a_web_process_loads_neither_the_laptop_runner_nor_the_simulation_driver():
    """create_app() in a fresh interpreter: what it imported."""
    probe = ("import json, sys\nfrom flashsale import create_app\ncreate_app()\n"
             "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout)
    assert not [m for m in loaded if m.startswith("devtools")]
    assert not {"flashsale.simulate.driver", "flashsale.simulate.report", "aiohttp"} & set(loaded)
    assert "flashsale.simulate.command" in loaded  # the command is registered, its driver is not loaded


def _absolute(node, package):
    """The absolute module an ImportFrom names, from inside `package`."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))

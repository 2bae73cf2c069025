"""`python -m <module>` runs the `if __name__ == "__main__":` block as soon as it is reached: anything
defined below it does not exist yet for main(). (A helper placed there broke `make pipeline` while every
test, which imports the module, passed.)"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for d in ("src", "pipelines", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def test_the_main_guard_is_the_last_statement():
    late = []
    for path in MODULES:
        body = ast.parse(path.read_text(encoding="utf-8")).body
        guards = [i for i, node in enumerate(body) if _is_main_guard(node)]
        if guards not in ([], [len(body) - 1]):
            late.append(str(path.relative_to(ROOT)))
    assert not late, f"statements after `if __name__ == '__main__'` in {late}"


def test_the_layout_check_finds_the_modules_with_a_main():
    with_main = [p.name for p in MODULES if any(_is_main_guard(n) for n in ast.parse(p.read_text()).body)]
    assert "flows.py" in with_main and "sweep.py" in with_main

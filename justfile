# One command each: `just lint`, `just test-unit`, `just test`, `just bench-smoke` (`just` alone lists them).
# `just` comes with the test extra (`pip install -e ".[test]"`, PyPI package rust-just); `make` users can run
# the recipe lines by hand. Tools run from the project's .venv when there is one, else from the active Python.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env("PYTHON", if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" })
# import-linter has no `python -m` entry point; this runs its `lint-imports` command with the same Python.
lint_imports := python + " -c 'from importlinter.cli import lint_imports_command; lint_imports_command()'"

# With PYTHONDONTWRITEBYTECODE set, every pytest process (each xdist worker, each subprocess a test starts) would
# compile all of screener, the tests (pytest rewrites their asserts) and their imports again: about 3.5 CPU-s a
# worker. `just test-unit` keeps that bytecode instead, outside the source folders (in .pytest_cache/pycache,
# ignored by git), so the choice of no __pycache__ in the tree still holds; without the variable nothing changes.
bytecode_cache := 'if [[ -n "${PYTHONDONTWRITEBYTECODE:-}" ]]; then export PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$PWD/.pytest_cache/pycache}"; fi; '

# list the recipes
default:
    @{{ just_executable() }} --list --unsorted

# ruff check, ruff format --check, mypy, and the import contracts (pyproject.toml [tool.importlinter])
lint:
    {{ python }} -m ruff check .
    {{ python }} -m ruff format --check .
    {{ python }} -m mypy screener connectors bench
    {{ lint_imports }}

# fix what ruff can fix and format the tree
fmt:
    {{ python }} -m ruff check --fix .
    {{ python }} -m ruff format .

# Hypothesis runs its `dev` profile here: a tenth of each property suite's examples (tests/hypothesis_profiles.py).
# Full counts: `just test-unit --hypothesis-profile=ci` (derandomized, as CI runs them), or any plain pytest run.
# One worker per core (pytest-xdist), each test file on one worker so its module fixtures are built once;
# `just test-unit -n 0` runs in this process (for pdb), and -x, -k ... pass through. schemathesis' pytest plugin
# (only tests/robustness uses it) is not loaded: it costs about 1.5 CPU-s in every worker.
# Tests marked `slow` (the other seeds and sizes of a check run here once, tests/_support/marks.py) run in CI and
# in any plain pytest run, not here.
# the unit tests, fast profile: nothing running, nothing beyond `pip install -e ".[test]"`
test-unit *args:
    {{ bytecode_cache }}{{ python }} -m pytest -q tests/unit --hypothesis-profile=dev -m "not slow" -p no:schemathesis -n auto --dist loadfile {{ args }}

# the tooling checks: lint, types and import contracts, promtool, the benchmark harness (needs promtool)
test-tooling *args:
    {{ python }} -m pytest -q tests/tooling {{ args }}

# everything, as CI runs it (installs system packages when root; see scripts/test)
test *args:
    scripts/test {{ args }}

# the benchmark harness at a tiny scale: checks that it runs and agrees, not the speed (writes to a temp dir)
bench-smoke:
    out="$(mktemp -d)"; {{ python }} -m bench --smoke --out "$out/BENCHMARKS.md" --workdir "$out/work" && echo "bench-smoke: $out/BENCHMARKS.md"

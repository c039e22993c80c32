"""The CI entry point runs exactly the README's test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Run every test**", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_test_command()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_readme_test_command_lints_runs_the_tests_and_every_chapter_under_two_blas_configurations():
    command = _readme_test_command()
    steps = [step.strip() for step in command.split("&&")]
    assert steps == ["pip install -r requirements.txt", "ruff check", "python -m pytest tests",
                     "python -m pytest --nbval book",
                     "OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1 python -m pytest --nbval book"]
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^hypothesis==", requirements, re.M) and re.search(r"^ruff==", requirements, re.M)


def test_ci_runs_the_portability_script_over_every_chapter_after_the_readme_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = _readme_test_command()
    assert ci_lines.index("python tools/portability") > ci_lines.index(command)
    assert "tools/portability" in (ROOT / "README.md").read_text().split("### What nbval compares")[1]

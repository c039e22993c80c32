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
                     "python tools/portability --configs default,haswell-1"]
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^hypothesis==", requirements, re.M) and re.search(r"^ruff==", requirements, re.M)


def test_ci_runs_the_other_two_portability_configurations_after_the_readme_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    command = _readme_test_command()
    assert ci_lines.index("python tools/portability --configs zen,sandybridge-1") > ci_lines.index(command)
    assert "tools/portability" in (ROOT / "README.md").read_text().split("### What nbval compares")[1]

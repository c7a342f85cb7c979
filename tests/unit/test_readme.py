"""The README's two commands are the ones users and CI run."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert "python -m study.run search_spaces/quickstart.yaml" in commands[0]
    assert "python -m pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


def test_quickstart_spec_named_by_the_readme_exists():
    assert (REPO / "search_spaces" / "quickstart.yaml").is_file()

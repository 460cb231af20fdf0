"""The README's two set-up commands stay in step with what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Get started", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    install, tests = commands
    assert "torch==2.13.0" in install and "shrinkssm train" in install
    assert "torch==2.13.0" in tests and tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = _setup_commands()[1].split("&&")[-1].strip()
    assert re.search(rf"^{re.escape(test_command)}$", ci, re.M), test_command
    assert "torch==2.13.0" in ci

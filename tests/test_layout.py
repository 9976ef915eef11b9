"""The shape of the code: each concept file copies alone into another codebase, no import cycle anywhere,
the main path stays within its line budgets, and a marked copy of a helper agrees with its original."""

import ast
import io
import os
import shutil
import subprocess
import sys
import tokenize

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCEPT_FILES = ("normalize.py", "rtt_grpo.py", "rewards.py", "discriminator.py")
MAIN_PATH = CONCEPT_FILES + ("train.py", "eval.py")


def project_modules() -> dict[str, str]:
    """module name -> path, for every .py file of the project (top level, experiments/, benchmarks/, tests/)."""
    found = {}
    for folder in ("", "experiments", "benchmarks", "tests"):
        for name in sorted(os.listdir(os.path.join(REPO, folder))):
            if name.endswith(".py"):
                found[name[:-3]] = os.path.join(REPO, folder, name)
    return found


def imported_project_modules(path: str, modules) -> set[str]:
    """Project modules a file imports anywhere (top level or inside a function)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(modules)


@pytest.mark.parametrize("name", CONCEPT_FILES)
def test_each_concept_file_copies_alone(tmp_path, name):
    """Copied alone into an empty folder, the file imports, runs its doctests, and names no project module."""
    modules = project_modules()
    assert imported_project_modules(os.path.join(REPO, name), modules) == set()
    shutil.copy(os.path.join(REPO, name), tmp_path / name)
    env = {**os.environ, "PYTHONPATH": ""}                                       # the project is not importable
    code = f"import {name[:-3]}, doctest, sys; sys.exit(doctest.testmod({name[:-3]}).failed)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_graph_has_no_cycle():
    modules = project_modules()
    graph = {name: imported_project_modules(path, modules) - {name} for name, path in modules.items()}
    state = {}                                                                   # 1: on the path, 2: done

    def visit(name, path):
        state[name] = 1
        for other in graph[name]:
            assert state.get(other) != 1, "import cycle: " + " -> ".join(path + [other])
            if other not in state:
                visit(other, path + [other])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def comment_or_docstring_lines(path: str) -> set[int]:
    source = open(path).read()
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node) is not None:
            lines |= set(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            lines.add(token.start[0])
    return lines


def test_the_main_path_stays_lean_and_the_concept_files_explain_themselves():
    lengths = {name: len(open(os.path.join(REPO, name)).read().splitlines()) for name in MAIN_PATH}
    assert sum(lengths.values()) <= 1800 and max(lengths.values()) <= 450, lengths
    for name in CONCEPT_FILES:
        share = len(comment_or_docstring_lines(os.path.join(REPO, name))) / lengths[name]
        assert share >= 0.30, f"{name}: {share:.0%} of its lines are comments or docstrings"


def test_the_training_loop_fits_on_a_screen_or_two():
    import train

    source = ast.parse(open(os.path.join(REPO, "train.py")).read())
    (loop,) = [node for node in source.body if isinstance(node, ast.FunctionDef) and node.name == "train"]
    assert loop.end_lineno - loop.lineno + 1 <= 120
    assert set(train.PRESETS) == {"toy", "smollm2", "paper"}


def test_the_copy_of_pad_rubrics_in_discriminator_agrees_with_rewards():
    import discriminator
    import rewards

    prompts = [{"id": "a", "rubrics": [{}, {}, {}]}, {"id": "b", "rubrics": [{}]}]
    assert torch.equal(discriminator._rubric_mask(prompts), rewards.pad_rubrics(prompts)[1])
    for broken in ([{"id": "c", "rubrics": []}], [{"id": "c"}]):
        for fn in (discriminator._rubric_mask, rewards.pad_rubrics):
            with pytest.raises(ValueError, match="'c' has no rubrics"):
                fn(broken)


@pytest.mark.parametrize("name", ["normalize", "rtt_grpo", "rewards"])
def test_the_tests_of_a_concept_file_copy_with_it(name):
    """README: copy normalize.py with tests/test_normalize.py and both work; likewise rtt_grpo and rewards."""
    modules = project_modules()
    assert imported_project_modules(os.path.join(REPO, "tests", f"test_{name}.py"), modules) == {name}

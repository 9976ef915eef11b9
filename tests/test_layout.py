"""The shape of the code: the layers the README's reading guide names, imports running one way through them, each
concept file copying alone into another codebase, budgets that keep the main path readable without packing it, and
a marked copy of a helper agreeing with its original."""

import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCEPT_FILES = ("normalize.py", "rtt_grpo.py", "rewards.py", "discriminator.py")
MAIN_PATH = CONCEPT_FILES + ("train.py", "eval.py")
FOLDERS = ("tasks", "policies", "relevance", "runs", "engines", "experiments", "benchmarks")
# The reading guide's layers, bottom to top (README "Read the code"): a module may import its own layer and the ones
# below it, never one above. Tests are outside the layers: they may import anything.
LAYERS = {
    1: ("normalize", "rtt_grpo", "rewards", "discriminator", "released_code"),     # the concepts
    2: ("runs",),                                                                    # files a run reads and writes
    3: ("tasks",),                                                                   # prompts, rubrics, judges
    4: ("policies",),                                                                # π_θ: load, sample, score
    5: ("relevance",),                                                               # making discriminators
    6: ("train", "eval", "engines", "experiments", "benchmarks"),                    # the entry points
}
ENTRY_POINTS = ("train.py", "eval.py", "relevance/build.py", "experiments/compare_methods.py", "experiments/study.py",
                "experiments/discriminator_candidates.py", "experiments/ifbench_agreement.py",
                "benchmarks/discriminator_speed.py", "benchmarks/normalize_speed.py", "benchmarks/smollm2_step.py",
                "engines/train_trl.py", "benchmarks/trl_step.py", "benchmarks/smollm2_profile.py",
                "tasks/ifeval_train.py", "relevance/reference_answers.py")


def product_files() -> list[str]:
    """Every .py file of the product, relative to the repository: the top level and the folders (not tests/)."""
    found = [name for name in sorted(os.listdir(REPO)) if name.endswith(".py")]
    for folder in FOLDERS:
        found += [f"{folder}/{name}" for name in sorted(os.listdir(os.path.join(REPO, folder))) if name.endswith(".py")]
    return found


def module_name(path: str) -> str:
    """"tasks/registry.py" -> "tasks.registry"; a folder's __init__.py is the folder."""
    name = path[:-3].replace("/", ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    (layer,) = [number for number, names in LAYERS.items() if top in names]
    return layer


def imported_project_modules(path: str, modules: set[str]) -> set[str]:
    """Project modules a file imports anywhere (top level or inside a function): `import a.b`, `from a import b`."""
    names = set()
    for node in ast.walk(ast.parse(open(os.path.join(REPO, path)).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = product_files()
    modules = {module_name(path) for path in files}
    return {module_name(path): imported_project_modules(path, modules) - {module_name(path)} for path in files}


def test_every_product_module_has_a_layer():
    for module in import_graph():
        assert layer_of(module) in LAYERS, module


def test_imports_run_one_way_down_the_layers_and_have_no_cycle():
    graph = import_graph()
    upward = [(module, other) for module, others in graph.items() for other in others
              if layer_of(other) > layer_of(module)]
    assert upward == [], f"imports from a lower layer to a higher one: {upward}"
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


def test_the_top_level_is_the_design_card():
    """`ls` shows the main path, the one extra concept (the authors' pipeline as it runs), the documents and folders."""
    top = sorted(name for name in os.listdir(REPO) if name.endswith(".py"))
    assert top == sorted(MAIN_PATH + ("released_code.py",))
    for folder in FOLDERS[:5]:                                                   # each folder says what it holds
        assert ast.get_docstring(ast.parse(open(os.path.join(REPO, folder, "__init__.py")).read()))


@pytest.mark.parametrize("name", CONCEPT_FILES)
def test_each_concept_file_copies_alone(tmp_path, name):
    """Copied alone into an empty folder, the file imports, runs its doctests, and names no project module."""
    assert import_graph()[name[:-3]] == set()
    shutil.copy(os.path.join(REPO, name), tmp_path / name)
    env = {**os.environ, "PYTHONPATH": ""}                                       # the project is not importable
    code = f"import {name[:-3]}, doctest, sys; sys.exit(doctest.testmod({name[:-3]}).failed)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_trl_trainer_copies_out_with_the_concept_files(tmp_path):
    """engines/trl_rtt.py names no project module but the concept files, and imports beside them alone."""
    assert import_graph()["engines.trl_rtt"] <= {name[:-3] for name in CONCEPT_FILES}
    for name in CONCEPT_FILES + ("engines/trl_rtt.py",):
        shutil.copy(os.path.join(REPO, name), tmp_path / os.path.basename(name))
    result = subprocess.run([sys.executable, "-c", "import trl_rtt; trl_rtt.RTTConfig(norm='rubric_group')"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


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


def test_the_main_path_stays_within_budgets_that_reward_reading():
    lengths = {path: len(open(os.path.join(REPO, path)).read().splitlines()) for path in product_files()}
    assert sum(lengths[name] for name in MAIN_PATH) <= 2100, {name: lengths[name] for name in MAIN_PATH}
    assert max(lengths.values()) <= 500, {path: n for path, n in lengths.items() if n > 500}
    for name in CONCEPT_FILES:
        share = len(comment_or_docstring_lines(os.path.join(REPO, name))) / lengths[name]
        assert share >= 0.30, f"{name}: {share:.0%} of its lines are comments or docstrings"


def test_one_statement_per_line_and_no_line_over_120_characters():
    """No `;`, no line over 120 characters anywhere in the product, and at most 2 tuple assignments of several values
    at once (`a, b = x, y`) in the main path: a name per value, a line per name."""
    packed = []
    for path in product_files():
        source = open(os.path.join(REPO, path)).read()
        long = [i for i, line in enumerate(source.splitlines(), start=1) if len(line) > 120]
        assert long == [], f"{path}: lines over 120 characters: {long}"
        for node in ast.walk(ast.parse(source)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, field, None)
                statements = [s.lineno for s in block if isinstance(s, ast.stmt)] if isinstance(block, list) else []
                assert len(statements) == len(set(statements)), f"{path}: two statements on one line"
            is_packed = isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) and isinstance(
                node.targets[0], ast.Tuple)
            if is_packed and path in MAIN_PATH:
                packed.append(f"{path}:{node.lineno}")
    assert len(packed) <= 2, packed


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_every_entry_point_can_be_asked_for_help(path):
    result = subprocess.run([sys.executable, *(["-m", module_name(path)] if "/" in path else [path]), "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout.lower(), result.stderr[-2000:]
    flags = re.findall(r"\[(--[\w-]+)", result.stdout)
    assert [flag for flag in flags if "-" in flag[2:]] == [], f"{path}: one convention, --words_with_underscores"
    assert "(default: )" not in result.stdout, f"{path}: an empty default printed"
    for negative in re.findall(r"--no_(\w+), --no-[\w-]+\s+(.*)", result.stdout):
        assert negative[1].startswith(f"the same as --{negative[0]} False"), negative


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


def test_the_copy_of_combine_advantages_in_normalize_agrees_with_rtt_grpo():
    import normalize
    import rtt_grpo

    g = torch.Generator().manual_seed(0)
    resp_adv, tok_adv = torch.randn(2, 4, generator=g), torch.randn(2, 4, 5, generator=g)
    for lam, method in ((0.0, "add"), (0.5, "add"), (2.0, "add"), (0.3, "mix"), (1.0, "mix")):
        assert torch.equal(normalize._combine(resp_adv, tok_adv, lam, method),
                           rtt_grpo.combine_advantages(resp_adv, tok_adv, lam, method))
    for lam, method in ((-0.1, "add"), (1.5, "mix"), (0.5, "sum")):
        for combine in (normalize._combine, rtt_grpo.combine_advantages):
            with pytest.raises(ValueError):
                combine(resp_adv, tok_adv, lam, method)


@pytest.mark.parametrize("name", ["normalize", "rtt_grpo", "rewards"])
def test_the_tests_of_a_concept_file_copy_with_it(name):
    """README: copy normalize.py with tests/test_normalize.py and both work; likewise rtt_grpo and rewards."""
    modules = set(import_graph())
    assert imported_project_modules(f"tests/test_{name}.py", modules) == {name}

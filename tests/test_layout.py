"""The layout's rules, read from the source: imports only go down (cli -> train / generate / evaluation -> data, the
core -> files, errors), modules and functions stay small, and no module reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "ddpm"
WINGS = ("cli", "data", "evaluation", "interop", "train")
# What each wing may not import (besides the package __init__, which no module imports).
FORBIDDEN = {
    "data": ("evaluation", "train", "cli", "interop", "generate"),
    "evaluation": ("train", "cli"),
    "interop": ("train", "cli", "evaluation", "data"),
    "train": ("cli",),
}
CORE = (
    "schedule",
    "diffusion",
    "losses",
    "likelihood",
    "sampling",
    "denoiser",
    "editing",
    "unet",
    "seeding",
    "oracles",
)
MAX_FILE_LINES, MAX_FUNCTION_LINES = 700, 60


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported module as a dotted name, the names taken from it, inside a function?) for every project import."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    local = {id(sub) for f in functions for sub in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "ddpm" or target.startswith("ddpm."):
                found.append((target, [a.name for a in node.names], id(node) in local))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], id(node) in local) for a in node.names if a.name.startswith("ddpm")]
    return found


def resolve(target: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The modules an import statement reaches: ``from ddpm.data import load`` reaches ddpm.data.load."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    return subs or [target]


def test_no_module_imports_the_package_face_and_wings_import_only_downwards():
    known = modules()
    problems = []
    for name, path in known.items():
        parts = name.split(".")
        wing = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS) else None
        for target, names, _ in imports_of(name, path):
            for reached in resolve(target, names, known):
                if reached == "ddpm":
                    problems.append(f"{name} imports the package __init__ ({names})")
                rparts = reached.split(".")
                if wing in FORBIDDEN and len(rparts) > 1 and rparts[1] in FORBIDDEN[wing]:
                    problems.append(f"{name} (the {wing} wing) imports {reached}")
                if len(parts) == 2 and parts[1] in CORE and len(rparts) > 1 and rparts[1] in WINGS:
                    problems.append(f"{name} (core) imports the wing module {reached}")
    assert not problems, "\n".join(problems)


def test_modules_and_functions_are_small_and_import_at_the_top():
    problems = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE_LINES:
            problems.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ".cli" not in name:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{name}.{node.name}: {length} lines")
        problems += [f"{name} imports {t} inside a function" for t, _, local in imports_of(name, path) if local]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", ["src", "benchmarks"])
def test_no_module_takes_another_modules_private_names(folder):
    problems = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] in ("ddpm", "harness")
            ):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    problems.append(f"{path.relative_to(ROOT)} imports {private} from {node.module}")
    assert not problems, "\n".join(problems)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks above on sources that break each rule (so a rule that can no longer fail is noticed)."""
    bad = "from ..evaluation.reference import cache\nfrom .. import UNet\n\ndef f():\n    from ..files import x\n"
    path = tmp_path / "m.py"
    path.write_text(bad)
    found = imports_of("ddpm.data.m", path)
    assert ("ddpm.evaluation.reference", ["cache"], False) in found
    assert ("ddpm", ["UNet"], False) in found and ("ddpm.files", ["x"], True) in found

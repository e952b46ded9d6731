"""envs/*.yaml (the conda environments of ``--use-conda``) agree with constraints.txt.

No conda can run here, so these checks are what keeps the environments honest: every pinned
package has the version of constraints.txt (conda names mapped to pip names), each rule family's
environment holds the packages its code needs (a fixed minimum, plus what the scripts of the rules
that use the environment import, followed through patchlens), the faiss build matches the file,
and patchlens itself is installed from the checkout. Pure parsing: no network, well under a second.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / "envs"
FAMILIES = ("data", "extract", "evaluate", "evaluate-gpu", "report")

# conda-forge name -> PyPI name where they differ. faiss-gpu has no official PyPI build: its
# version must equal the faiss-cpu pin.
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib", "faiss-gpu": "faiss-cpu"}
# import name -> PyPI name where they differ (faiss: either build, see _covers).
IMPORT_TO_PIP = {"PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn",
                 "yaml": "pyyaml", "faiss": "faiss-cpu"}
# Packages an env may hold without a pin in constraints.txt (the interpreter and its installer).
UNPINNED = {"python", "pip"}
# Minimum per family (conda names), from the design: what each stage's code is built on.
REQUIRED = {
    "data": {"numpy", "pillow", "scikit-image", "pandas", "pooch", "tqdm", "pyyaml"},
    "extract": {"pytorch", "torchvision", "timm", "safetensors", "h5py", "h5netcdf", "numpy",
                "pillow", "tqdm", "pandas"},
    "evaluate": {"faiss-cpu", "numpy", "scipy", "pandas", "pyarrow", "h5py", "h5netcdf", "xarray",
                 "scikit-learn", "scikit-image", "pillow"},
    "evaluate-gpu": {"faiss-gpu", "numpy", "scipy", "pandas", "pyarrow", "h5py", "h5netcdf",
                     "xarray", "scikit-learn", "scikit-image", "pillow"},
    "report": {"matplotlib-base", "pandas", "pyarrow", "xarray", "h5netcdf"},
}
SPEC = re.compile(r"^(?:[\w.\-]+::)?(?P<name>[A-Za-z0-9_.\-]+)\s*"
                  r"(?:(?P<op>==|>=|<=|!=|=|>|<|~=)\s*(?P<version>[^\s=,<>!]+))?(?P<rest>.*)$")


def read_constraints(path: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """``name==version`` lines of constraints.txt as {lower-case name: version}."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"{path.name}: '{line}' is not name==version"
        pins[name.strip().lower()] = version.strip()
    return pins


def read_env(family: str) -> dict:
    """One env file: {'channels': [...], 'conda': {name: (op, version, rest)}, 'pip': [...]}."""
    path = ENVS / f"{family}.yaml"
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a YAML mapping"
    conda, pip = {}, []
    for dep in doc.get("dependencies") or []:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path}: unexpected mapping in dependencies: {dep}"
            pip.extend(str(p) for p in dep["pip"])
            continue
        m = SPEC.match(str(dep).strip())
        assert m, f"{path}: cannot parse dependency '{dep}'"
        name = m["name"].lower()
        assert name not in conda, f"{path}: '{name}' listed twice"
        conda[name] = (m["op"], m["version"], m["rest"].strip())
    return {"path": path, "channels": doc.get("channels") or [], "conda": conda, "pip": pip}


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return read_constraints()


@pytest.mark.parametrize("family", FAMILIES)
def test_env_pins_equal_constraints(family, pins):
    env = read_env(family)
    problems = []
    for name, (op, version, rest) in env["conda"].items():
        if name in UNPINNED:
            continue
        pip_name = CONDA_TO_PIP.get(name, name)
        if pip_name not in pins:
            problems.append(f"{name}: not in constraints.txt (pin it there first)")
        elif op != "==" or rest:
            problems.append(f"{name}: pin it exactly as '{name}=={pins[pip_name]}'")
        elif version != pins[pip_name]:
            problems.append(f"{name}=={version} but constraints.txt has {pip_name}=={pins[pip_name]}")
    for line in env["pip"]:
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*==\s*(\S+)$", line.strip())
        if m and pins.get(m[1].lower(), m[2]) != m[2]:
            problems.append(f"pip {m[1]}=={m[2]} but constraints.txt has {pins[m[1].lower()]}")
    assert not problems, f"{env['path']}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("family", FAMILIES)
def test_env_has_its_family_packages(family):
    env = read_env(family)
    missing = sorted(REQUIRED[family] - set(env["conda"]))
    assert not missing, f"{env['path']}: missing {missing} (needed by the {family} rules)"
    assert env["channels"] == ["conda-forge", "nodefaults"], (
        f"{env['path']}: channels must be [conda-forge, nodefaults], got {env['channels']}")
    assert "python" in env["conda"] and "pip" in env["conda"], (
        f"{env['path']}: list python and pip (pip installs patchlens itself)")


def test_envs_share_one_python():
    specs = {f: read_env(f)["conda"]["python"][:2] for f in FAMILIES}
    assert len(set(specs.values())) == 1, f"envs pin different pythons: {specs}"


def test_faiss_build_per_env():
    cpu, gpu = read_env("evaluate")["conda"], read_env("evaluate-gpu")["conda"]
    assert "faiss-cpu" in cpu and "faiss-gpu" not in cpu, "envs/evaluate.yaml: faiss-cpu only"
    assert "faiss-gpu" in gpu and "faiss-cpu" not in gpu, "envs/evaluate-gpu.yaml: faiss-gpu only"
    same = {k: v for k, v in cpu.items() if k != "faiss-cpu"}
    assert same == {k: v for k, v in gpu.items() if k != "faiss-gpu"}, (
        "envs/evaluate-gpu.yaml must equal envs/evaluate.yaml apart from the faiss build")


@pytest.mark.parametrize("family", ("evaluate", "evaluate-gpu", "report"))
def test_no_torch_where_stored_features_are_read(family):
    conda = read_env(family)["conda"]
    assert not {"pytorch", "torchvision", "timm"} & set(conda), (
        f"envs/{family}.yaml: evaluators and reports work on stored features without torch")


@pytest.mark.parametrize("family", FAMILIES)
def test_env_installs_patchlens_from_checkout(family):
    """conda runs pip with the env file's directory as working directory, so `-e ../` is the
    workflow root (conda/conda#3969: "The directory can be relative to this environment file")."""
    env = read_env(family)
    editable = [p.split(None, 1)[1] for p in env["pip"]
                if p.startswith(("-e ", "--editable ")) and len(p.split(None, 1)) == 2]
    assert editable, f"{env['path']}: add '-e ../' to its pip section so scripts import patchlens"
    target = (env["path"].parent / editable[0]).resolve()
    project = target / "pyproject.toml"
    assert project.is_file() and re.search(r'(?m)^name\s*=\s*"patchlens"', project.read_text()), (
        f"{env['path']}: '-e {editable[0]}' resolves to {target}, which is not the patchlens project")


# --- what the rules' code imports ----------------------------------------------------------------

RULE_HEAD = re.compile(r"(?m)^(?:rule|checkpoint)\s+(\w+)\s*:")
LITERAL = re.compile(r"""["']([^"'{}]+)["']""")


def _directive(block: str, name: str) -> str:
    """Text of one directive in a rule block (its line and its more-indented continuation)."""
    m = re.search(rf"(?m)^([ \t]+){name}\s*:(.*(?:\n\1[ \t]+.*)*)", block)
    return m[2] if m else ""


def rules_with_envs(root: Path = ROOT) -> list[tuple[str, str, Path]]:
    """(rule, env family, code file) for each rule whose `conda:` names envs/*.yaml, as a string
    literal or through a module-level name (`EVAL_ENV = "a.yaml" if c else "b.yaml"` counts both),
    and whose code is a literal `script:` or a `python -m patchlens.x` shell; paths relative to the
    rule files' directory, as Snakemake resolves them (`use rule` inherits both: same check)."""
    files = [root / "Snakefile", *sorted((root / "rules").glob("*.smk"))]
    texts = {f: f.read_text() for f in files if f.is_file()}
    names: dict[str, list[str]] = {}
    for text in texts.values():
        for name, value in re.findall(r"(?m)^([A-Za-z_]\w*)\s*=\s*(.+)$", text):
            names.setdefault(name, []).extend(LITERAL.findall(value))
    found = []
    for smk, text in texts.items():
        heads = list(RULE_HEAD.finditer(text))
        for head, nxt in zip(heads, heads[1:] + [None]):
            block = text[head.start(): nxt.start() if nxt else len(text)]
            conda = _directive(block, "conda")
            paths = LITERAL.findall(conda) or [
                p for ident in re.findall(r"\b([A-Za-z_]\w*)\b", conda) for p in names.get(ident, [])]
            envs = [(smk.parent / p).resolve() for p in paths if p.endswith((".yaml", ".yml"))]
            code = [(smk.parent / p).resolve() for p in LITERAL.findall(_directive(block, "script"))
                    if p.endswith(".py")]
            code += [_module_file(m) for m in re.findall(r"-m\s+(patchlens(?:\.\w+)+)",
                                                          _directive(block, "shell"))]
            for env in envs:
                if env.parent == (root / "envs").resolve():
                    found += [(head[1], env.stem, c) for c in code if c is not None]
    return found


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _optional_nodes(tree: ast.AST, lazy: bool) -> set[int]:
    """ids of import nodes that need not succeed when the module is imported: inside `try:` with
    an ImportError-like handler, under `if TYPE_CHECKING:`, and (lazy=True) inside functions,
    which import only when called (e.g. torch inside the extraction-only half of a module)."""
    skip = set()
    for node in ast.walk(tree):
        body = []
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) if h.type else "" for h in node.handlers}
            if caught & {"", "Exception"} or any("ImportError" in c or "ModuleNotFoundError" in c
                                                  for c in caught):
                body = node.body
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            body = node.body
        elif lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            body = node.body if isinstance(node.body, list) else [node.body]
        for stmt in body:
            skip.update(id(n) for n in ast.walk(stmt))
    return skip


def third_party_imports(entry: Path) -> dict[str, str]:
    """{top-level third-party module: file importing it} that running `entry` needs: all of the
    script's own imports, and the import-time imports of every patchlens module it reaches
    (parent packages included). Stdlib, patchlens and snakemake (the script preamble puts the
    driver's snakemake on sys.path) are excluded. Imports inside patchlens functions are not
    followed: they run only on the code path that calls them."""
    seen, todo, found = set(), [entry], {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        optional = _optional_nodes(tree, lazy=path != entry)
        for node in ast.walk(tree):
            if id(node) in optional or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif node.level:
                pkg = _package_of(path, node.level)
                if pkg is None:
                    continue
                base = ".".join(filter(None, [pkg, node.module]))
                modules = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for mod in modules:
                top = mod.split(".")[0]
                if top == "patchlens":
                    parts = mod.split(".")
                    for i in range(1, len(parts) + 1):
                        f = _module_file(".".join(parts[:i]))
                        if f is not None:
                            todo.append(f)
                elif top not in sys.stdlib_module_names and top not in {"snakemake", "__future__"}:
                    found.setdefault(top, _show(path))
    return found


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _package_of(path: Path, level: int) -> str | None:
    try:
        rel = path.relative_to(ROOT).with_suffix("")
    except ValueError:
        return None
    parts = list(rel.parts[:-1])    # the package of a module, or of a package's __init__
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts) if parts and parts[0] == "patchlens" else None


def _covers(conda: dict, module: str) -> bool:
    names = {CONDA_TO_PIP.get(n, n) for n in conda} | set(conda)
    if module == "faiss":
        return bool({"faiss-cpu", "faiss-gpu"} & set(conda))
    return IMPORT_TO_PIP.get(module, module).lower() in names


def test_import_scan_sees_through_patchlens(tmp_path):
    """The scanner follows patchlens imports, skips optional ones, maps import to package names."""
    script = tmp_path / "s.py"
    script.write_text("import numpy as np\nfrom PIL import Image\nimport patchlens.errors\n"
                      "try:\n    import torch\nexcept ImportError:\n    torch = None\n"
                      "import os, json\ndef f():\n    import scipy\n")
    lib = tmp_path / "lib.py"
    lib.write_text("import h5py\ndef g():\n    import torch\n")
    found = third_party_imports(script)
    assert set(found) == {"numpy", "PIL", "scipy"}    # a script's own lazy imports count
    assert set(third_party_imports(lib)) == {"h5py", "torch"}
    script.write_text("import patchlens.data.dataset\n")    # followed into patchlens
    assert "numpy" in third_party_imports(script)
    assert _covers({"pillow": None}, "PIL") and not _covers({"numpy": None}, "PIL")
    assert _covers({"faiss-gpu": None}, "faiss") and _covers({"pytorch": None}, "torch")


def test_rule_code_imports_are_in_its_env():
    triples = rules_with_envs()
    assert triples, "no rule names envs/*.yaml in `conda:` together with a script"
    problems = []
    for rule, family, code in triples:
        if not (ENVS / f"{family}.yaml").is_file():
            problems.append(f"rule {rule}: conda env envs/{family}.yaml does not exist")
            continue
        conda = read_env(family)["conda"]
        for module, where in sorted(third_party_imports(code).items()):
            if not _covers(conda, module):
                problems.append(f"rule {rule} (envs/{family}.yaml): '{module}' imported by "
                                f"{where} is not in the env")
    assert not problems, "\n".join(problems)

"""The repository stands on its own: what a clone or a pip install of it gets.

- the declared requirements are the third-party packages the code imports (none missing, none
  unused), the Python version matches what the dependencies support, and the
  pytorch-lightning range covers the private LightningCLI methods ``dck`` overrides;
- the licence ``setup.cfg`` declares is in the repository;
- nothing a user reads (README, docs, BENCHMARKS, configs, the package) points outside the
  repository or to a path of the machine it was written on, and every relative link resolves.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dck_lightning"

#: Declared requirements the package needs at run time without importing them by name:
#: LightningCLI parses the command line with jsonargparse; torchmetrics' mAP runs on
#: faster-coco-eval (``backend="faster_coco_eval"``).
USED_WITHOUT_IMPORT = {"jsonargparse", "faster-coco-eval"}


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def install_requires(section: str = "install_requires") -> dict[str, Requirement]:
    """The requirements of ``[options] install_requires``, or of an ``[options.extras_require]``
    group (``section="extras_require.gpu"``)."""
    if section.startswith("extras_require."):
        text = setup_cfg()["options.extras_require"][section.removeprefix("extras_require.")]
    else:
        text = setup_cfg()["options"][section]
    lines = text.strip().splitlines()
    requirements = [Requirement(line.strip()) for line in lines if line.strip()]
    return {canonical(r.name): r for r in requirements}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> files of the package importing it (top-level names, absolute imports)."""
    distributions = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "dck_lightning":
                    continue
                assert top in distributions, (
                    f"{path}: imports {top}, which no installed package provides"
                )
                for distribution in distributions[top]:
                    found.setdefault(canonical(distribution), set()).add(
                        str(path.relative_to(REPO))
                    )
    return found


def test_every_imported_package_is_declared_and_every_declared_one_used():
    """Imports are install_requires, or the ``gpu`` extra's optional kernels (imported only
    behind a guard: the package runs without them)."""
    declared, imported = install_requires(), imported_distributions()
    optional = install_requires("extras_require.gpu")
    undeclared = {
        name: sorted(files)
        for name, files in imported.items()
        if name not in declared and name not in optional
    }
    assert not undeclared, f"imported but not in setup.cfg install_requires: {undeclared}"
    unused = set(declared) - set(imported) - USED_WITHOUT_IMPORT
    assert not unused, f"declared in setup.cfg but never imported: {sorted(unused)}"


def test_declared_ranges_hold_the_tested_versions_and_python():
    """The installed (tested) versions satisfy the declared ranges, and ``python_requires``
    promises no Python that the dependencies as installed do not support."""
    for name, requirement in install_requires().items():
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (name, installed)
    python_requires = SpecifierSet(setup_cfg()["options"]["python_requires"])
    assert python_requires.contains(f"{sys.version_info.major}.{sys.version_info.minor}")
    floor = min(Version(spec.version) for spec in python_requires if spec.operator == ">=")
    for name in ("torch", "torchvision", "pytorch-lightning"):
        needed = SpecifierSet(metadata.metadata(name).get("Requires-Python") or "")
        lowest = [Version(s.version) for s in needed if s.operator in (">=", ">")]
        assert not lowest or floor >= max(lowest), (
            f"python_requires {python_requires} allows Python {floor}, but {name} "
            f"{metadata.version(name)} needs {needed}"
        )
    readme = (REPO / "README.md").read_text()
    assert f"Python {floor.major}.{floor.minor}+" in readme


def test_lightning_range_is_bounded_because_the_cli_overrides_private_methods():
    """``dck`` overrides private LightningCLI methods: they must exist in the installed (tested)
    Lightning, and the declared range must stop at the tested minor version; weights_only
    checkpoint loading needs Lightning 2.6."""
    from pytorch_lightning.cli import LightningCLI

    from dck_lightning.cli import DCKLightningCLI

    for name in ("_parse_ckpt_path",):
        assert name in vars(DCKLightningCLI) and callable(getattr(LightningCLI, name, None)), name
    spec = install_requires()["pytorch-lightning"].specifier
    assert any(s.operator in ("<", "<=") for s in spec), "pytorch-lightning needs an upper bound"
    assert not spec.contains("2.5.9") and spec.contains(metadata.version("pytorch-lightning"))


def test_the_licence_setup_cfg_declares_is_in_the_repository():
    metadata_section = setup_cfg()["metadata"]
    assert metadata_section["license"] == "Apache-2.0"
    licence = REPO / metadata_section["license_files"].strip()
    text = licence.read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


#: What a clone of the repository must not hold: paths outside it, paths of a build machine.
OUTSIDE = re.compile(r"\.\./shared|/work/|/home/[a-z]|/Users/[A-Za-z]|/scratch/[a-z]+/(?!\$)")


def user_facing_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "notebooks").glob("*.md"))
    files += sorted((REPO / "configs").rglob("*.yaml"))
    files += sorted(PACKAGE.rglob("*.py"))
    files += sorted((REPO / "scripts").glob("*"))
    return [path for path in files if path.is_file()]


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_outside_the_repository(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        assert not OUTSIDE.search(line), f"{path.relative_to(REPO)}:{number}: {line.strip()}"


@pytest.mark.parametrize(
    "path",
    [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_relative_links_resolve_inside_the_repository(path: Path):
    for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.exists(), f"{path.relative_to(REPO)} links to missing {target}"
        assert resolved.is_relative_to(REPO), f"{path.relative_to(REPO)} links outside: {target}"


def test_readme_links_the_layer_maths():
    readme = (REPO / "README.md").read_text()
    five_lines = readme[readme.index("## The layers in five lines") :]
    five_lines = five_lines[: five_lines.index("\n## ", 1)]
    assert "](docs/layers.md)" in five_lines
    layers = (REPO / "docs" / "layers.md").read_text()
    for name in ("DynamicConv2d", "DeformConv2d", "GlobalContextModule", "ResidualDCB", "DCB(x)"):
        assert name in layers
    assert "DCK_SHARED_DATA" in readme

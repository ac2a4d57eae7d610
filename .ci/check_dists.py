"""Check built wheels: the package and its entry points are in, tests and benchmarks are not."""

from __future__ import annotations

import sys
import zipfile
from configparser import ConfigParser
from pathlib import Path

# wheel file prefix -> (top-level package, entry points of group "galmerge" it must declare)
EXPECTED = {
    # the built-ins are listed in galmerge.plugin.manager.BUILTIN_PLUGINS, not as entry points
    "galmerge-": ("galmerge", set()),
    "galmerge_mcc-": ("galmerge_mcc", {"mcc"}),
    "galmerge_legacysurvey-": ("galmerge_legacysurvey", {"legacysurvey"}),
    "galmerge_lsst-": ("galmerge_lsst", {"lsst"}),
}


def check(wheel: Path, package: str, entry_points: set[str]) -> list[str]:
    problems = []
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    extra = {t for t in tops if not t.endswith(".dist-info")} - {package}
    if extra:
        problems.append(f"{wheel.name}: unexpected top-level entries {sorted(extra)}")
    if f"{package}/__init__.py" not in names:
        problems.append(f"{wheel.name}: {package}/__init__.py missing")
    if any("/tests/" in f"/{n}" or "/benchmarks/" in f"/{n}" for n in names):
        problems.append(f"{wheel.name}: contains tests or benchmarks")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append(f"{wheel.name}: LICENSE missing")
    [ep_file] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(ep_file).decode())
    declared = set(parser["galmerge"]) if parser.has_section("galmerge") else set()
    if declared != entry_points:
        problems.append(f"{wheel.name}: galmerge entry points {sorted(declared)}")
    if package == "galmerge" and parser.get("console_scripts", "galmerge", fallback="") != (
        "galmerge.cli:main"
    ):
        problems.append(f"{wheel.name}: console script 'galmerge' missing")
    return problems


def main(dist: Path) -> int:
    problems = []
    for prefix, (package, eps) in EXPECTED.items():
        wheels = sorted(dist.glob(f"{prefix}[0-9]*.whl"))
        if len(wheels) != 1:
            problems.append(f"expected one {prefix}*.whl in {dist}, found {len(wheels)}")
            continue
        problems += check(wheels[0], package, eps)
    for line in problems:
        print(f"check_dists: {line}", file=sys.stderr)
    if not problems:
        print(f"check_dists: {len(EXPECTED)} wheels ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

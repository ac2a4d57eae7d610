"""The user guide's offline code blocks run as written, in order, in one empty folder.

A block runs when the line before its opening fence is ``<!-- docs-test: run -->``; ``bash``
blocks run with ``bash -euo pipefail``, ``python`` blocks with this interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
MARKER = "<!-- docs-test: run -->"
BLOCK = re.compile(r"^" + re.escape(MARKER) + r"\n```(\w+)\n(.*?)^```$", re.S | re.M)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    blocks = [(lang, body) for lang, body in BLOCK.findall(text)]
    assert len(blocks) == text.count(MARKER), "a marker is not right above a fenced block"
    return blocks


def test_marker_parsing() -> None:
    text = f"x\n{MARKER}\n```bash\necho hi\n```\n\n```bash\nnot run\n```\n"
    assert runnable_blocks(text) == [("bash", "echo hi\n")]


@pytest.mark.slow
def test_guide_blocks_run_offline(tmp_path: Path) -> None:
    blocks = runnable_blocks(GUIDE.read_text())
    assert len(blocks) >= 6
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "GALMERGE_DATA": str(tmp_path / "data")}  # fmt: skip
    for i, (lang, body) in enumerate(blocks):
        if lang == "bash":
            command = ["bash", "-euo", "pipefail", "-c", body]
        elif lang == "python":
            command = [sys.executable, "-c", body]
        else:
            pytest.fail(f"block {i}: cannot run a {lang} block")
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert result.returncode == 0, f"guide block {i} ({lang}) failed:\n{body}\n" + (
            result.stdout[-2000:] + result.stderr[-3000:]
        )


SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', re.M)


def test_site_snippets_name_sections_that_exist() -> None:
    """The site includes README sections by marker (one source); a renamed or dropped marker
    would leave a page silently empty."""
    included = set()
    for page in sorted((ROOT / "docs").glob("*.md")):
        for path, section in SNIPPET.findall(page.read_text()):
            text = (ROOT / path).read_text()
            if section:
                start, end = f"<!-- --8<-- [start:{section}] -->", f"<!-- --8<-- [end:{section}] -->"
                assert text.count(start) == 1 and text.count(end) == 1, (page.name, section)
                body = text[text.index(start) + len(start):text.index(end)]
                assert len(body.strip()) > 200, (page.name, section)
                included.add((path, section))
    # the README's user-facing sections are on the site
    for section in ("setup", "install", "classify", "scale", "shift", "fractions", "tuning",
                    "results", "reproduce", "envvars"):
        assert ("README.md", section) in included, section


def test_guide_refers_to_pages_not_the_readme() -> None:
    text = GUIDE.read_text().replace("benchmarks/README.md", "")
    assert "README" not in text


def test_settings_page_lists_every_setting() -> None:
    """docs/settings.md's table names every top-level setting and section option a config
    holds, so a setting added to DEFAULTS without a line there fails here."""
    from galmerge.config.resolve import DEFAULTS, SECTIONS

    text = (ROOT / "docs" / "settings.md").read_text()
    names = [k for k in DEFAULTS if k not in (*SECTIONS, "lr_multipliers", "backbone_options",
                                              "strategies")]
    names += [f"{s}.{o}" if f"`{s}.{o}`" in text else o for s in SECTIONS for o in DEFAULTS[s]]
    missing = [n for n in names if f"`{n}`" not in text and f".{n}`" not in text
               and f"`{n}," not in text and f", `{n}`" not in text]
    assert not missing, missing


PLUGIN_MARKER = "<!-- docs-test: backbone-options -->"
PLUGIN_BLOCK = re.compile(r"^" + re.escape(PLUGIN_MARKER) + r"\n```(\w+)\n(.*?)^```$", re.S | re.M)
QUICK = ["--source", "synthetic:illustris?n=30&seed=0", "--target", "synthetic:sdss?n=30&seed=1",
         "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--device", "cpu",
         "--quiet"]


def test_plugin_guide_backbone_options_work_as_written(tmp_path, register_plugin) -> None:
    """docs/plugins.md's backbone, command lines and config file: the options reach the run."""
    import json
    import shlex
    import tomllib

    from click.testing import CliRunner

    from galmerge.cli import cli

    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = dict(PLUGIN_BLOCK.findall(text))
    assert set(blocks) == {"python", "bash", "toml"} and text.count(PLUGIN_MARKER) == 3
    namespace: dict = {}
    exec(compile(blocks["python"], "docs/plugins.md", "exec"), namespace)  # noqa: S102
    register_plugin(namespace["SmallCNNPlugin"](), "smallcnn-docs")
    commands = [shlex.split(line, comments=True)
                for line in blocks["bash"].replace("\\\n", " ").splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["galmerge", "list"], ["galmerge", "train"]]
    listed = CliRunner().invoke(cli, [*commands[0][1:], "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.output) if r["name"] == "smallcnn"]
    assert row["options"] == {"width": 16, "dropout": 0.0}
    (tmp_path / "smallcnn.toml").write_text(blocks["toml"])
    # the page's train line and its config file, each with a quick-look tail (flags given
    # twice: the later wins) on a few synthetic images
    for name, args in (("flags", commands[1][1:]),
                       ("file", ["train", "--config", str(tmp_path / "smallcnn.toml")])):
        run = tmp_path / name
        result = CliRunner().invoke(cli, [*args, *QUICK, "--run-dir", str(run)])
        assert result.exit_code == 0, (name, result.output)
        config = tomllib.loads((run / "config.toml").read_text())
        assert config["backbone"] == "smallcnn"
        assert config["backbone_options"] == {"width": 32, "dropout": 0.2}, name

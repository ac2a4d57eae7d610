"""The galmerge-mcc plugin: its loss, and its discovery through the installed entry point."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

galmerge_mcc = pytest.importorskip(
    "galmerge_mcc", reason="install the plugin first: pip install -e plugins/galmerge-mcc"
)

from galmerge.errors import GalmergeError  # noqa: E402
from galmerge.plugin.strategy_api import (  # noqa: E402
    StepInputs,
    StrategyContext,
    parse_strategy_expression,
)


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch):
    """A plugin manager that loads this one third-party plugin from its entry point."""
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    monkeypatch.setenv("GALMERGE_LOAD_PLUGINS", "mcc")
    monkeypatch.delenv("GALMERGE_DISABLE_PLUGINS", raising=False)
    reset_plugin_manager()
    yield get_plugin_manager()
    reset_plugin_manager()


def _context() -> StrategyContext:
    return StrategyContext(feature_dim=8, num_classes=2, total_steps=10, device=torch.device("cpu"))


def _step(target_logits: torch.Tensor) -> StepInputs:
    n = target_logits.shape[0]
    return StepInputs(
        source_features=torch.zeros(n, 8),
        source_logits=torch.zeros(n, 2),
        source_labels=torch.zeros(n, dtype=torch.long),
        target_features=torch.zeros(n, 8),
        target_logits=target_logits,
        progress=0.5,
    )


def _mcc_reference(logits: torch.Tensor, temperature: float) -> float:
    """The paper's equations, element by element."""
    b, k = logits.shape
    p = [[math.exp(v / temperature) for v in row] for row in logits.tolist()]
    p = [[v / sum(row) for v in row] for row in p]
    h = [-sum(v * math.log(v) for v in row) for row in p]
    w_raw = [1 + math.exp(-x) for x in h]
    w = [b * x / sum(w_raw) for x in w_raw]
    c = [[sum(p[i][j] * w[i] * p[i][m] for i in range(b)) for m in range(k)] for j in range(k)]
    col = [sum(c[j][m] for j in range(k)) for m in range(k)]
    return sum(c[j][m] / col[m] for j in range(k) for m in range(k) if j != m) / k


def test_registered_through_the_entry_point(manager) -> None:
    record = manager.get("strategies", "mcc")
    assert record.defaults == {"weight": 1.0, "temperature": 2.5}
    info = manager.owner("strategies", "mcc")
    assert info.distribution == "galmerge-mcc" and not info.builtin
    assert "mmd" in manager.components("strategies")  # built-ins still there


def test_listed_by_the_cli(manager) -> None:
    from click.testing import CliRunner

    from galmerge.cli import cli

    result = CliRunner().invoke(cli, ["list", "strategies", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["mcc"]["distribution"] == "galmerge-mcc"


def test_left_out_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    monkeypatch.setenv("GALMERGE_LOAD_PLUGINS", "")
    reset_plugin_manager()
    try:
        with pytest.raises(GalmergeError, match="unknown strateg"):
            get_plugin_manager().get("strategies", "mcc")
    finally:
        reset_plugin_manager()


def test_combines_with_builtin_strategies(manager) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 2, requires_grad=True)
    step = _step(logits)
    step.source_features = torch.randn(6, 8)
    step.target_features = torch.randn(6, 8) + 1
    terms = {}
    for name in parse_strategy_expression("mmd+mcc"):
        record = manager.get("strategies", name)
        terms.update(record.build(_context(), dict(record.defaults))(step))
    assert set(terms) == {"mmd", "mcc"}
    assert terms["mmd"].item() > 0


def test_matches_the_paper_equations() -> None:
    from galmerge_mcc.loss import mcc_loss

    gen = torch.Generator().manual_seed(1)
    for k, temperature in ((2, 2.5), (4, 1.0)):
        logits = torch.randn(7, k, generator=gen, dtype=torch.float64) * 3
        value = mcc_loss(logits, temperature).item()
        assert value == pytest.approx(_mcc_reference(logits, temperature), rel=1e-9)


def test_confident_distinct_predictions_confuse_less(manager) -> None:
    module = manager.get("strategies", "mcc").build(_context(), {})
    confident = torch.tensor([[8.0, -8.0], [-8.0, 8.0]] * 8)
    uncertain = torch.tensor([[0.2, -0.2], [-0.1, 0.1]] * 8)
    low = module(_step(confident))["mcc"].item()
    high = module(_step(uncertain))["mcc"].item()
    assert low < 0.1 < 0.4 < high <= 0.5 + 1e-6  # 0.5 = two classes predicted as one
    one_class = module(_step(torch.tensor([[9.0, -9.0]] * 8)))["mcc"]
    assert torch.isfinite(one_class)


def test_gradient_flows_and_steps_reduce_confusion(manager) -> None:
    module = manager.get("strategies", "mcc").build(_context(), {"temperature": 2.0})
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(16, 2, generator=gen) * 0.3).requires_grad_()
    before = module(_step(logits))["mcc"]
    before.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    opt = torch.optim.Adam([logits], lr=0.2)
    for _ in range(30):
        opt.zero_grad()
        module(_step(logits))["mcc"].backward()
        opt.step()
    assert module(_step(logits))["mcc"].item() < 0.5 * before.item()


def test_trains_with_mmd_plus_mcc(manager, tmp_path, monkeypatch) -> None:
    """The third-party route end to end: `galmerge train --strategy mmd+mcc` on tiny files."""
    import csv
    import tomllib

    import h5py
    import numpy as np
    from click.testing import CliRunner

    from galmerge.cli import cli

    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    rng = np.random.default_rng(0)
    for name, shift in (("source", 0.0), ("target", 0.5)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as fh:
            fh["images"] = rng.normal(shift, 1.0, (32, 3, 32, 32)).astype("float32")
            fh["labels"] = np.arange(32) % 2
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--source", f"hdf5:{tmp_path / 'source.h5'}",
            "--target", f"hdf5:{tmp_path / 'target.h5'}",
            "--strategy", "mmd+mcc",
            "--set", "mcc.temperature=2.0",
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--quiet",
            "--run-dir", str(run),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and float(rows[0]["loss_mcc"]) > 0
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["strategies"]["mcc"] == {"weight": 1.0, "temperature": 2.0}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"temprature": 2.0}, "unknown option"), ({"temperature": 0}, "temperature")],
)
def test_bad_options(manager, options, message) -> None:
    with pytest.raises(GalmergeError, match=message):
        manager.get("strategies", "mcc").build(_context(), options)


@pytest.mark.parametrize("temperature", [float("nan"), "inf", -1.0, 1e6])
def test_a_temperature_that_is_not_finite_and_in_range_is_one_line(manager, temperature) -> None:
    """inf once made the loss a constant (the strategy silently did nothing) and nan a NaN loss;
    both are now refused with the option's bounds, from build and from a run's config."""
    from galmerge.config.resolve import resolve_config

    for attempt in (
        lambda: manager.get("strategies", "mcc").build(_context(), {"temperature": temperature}),
        lambda: resolve_config(cli={"source": "synthetic:pristine", "target": "synthetic:noisy",
                                    "strategy": "mcc",
                                    "strategies": {"mcc": {"temperature": temperature}}}),
    ):
        with pytest.raises(GalmergeError) as info:
            attempt()
        text = str(info.value)
        assert "option temperature must be >= 0.01 and <= 100" in text and "\n" not in text


def test_plugin_module_does_not_import_torch() -> None:
    code = "import sys, galmerge_mcc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

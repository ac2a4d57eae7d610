"""Training notices a collapsed run: a one-line warning while it runs and `warnings` in
summary.json. The collapse is real: a strategy that pushes every logit towards 'merger'."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from train_toys import ToyPlugin, _NoNone, toy_sets

import galmerge
from galmerge import hookimpl
from galmerge.plugin.records import Strategy
from galmerge.scores.collapse import collapse_signs, collapse_warning, run_warnings


class _PushMerger(nn.Module):
    """A loss minimised by calling everything a merger: the classifier collapses onto class 1."""

    def forward(self, step) -> dict[str, torch.Tensor]:
        z = torch.cat([step.source_logits, step.target_logits])
        return {"push": (z[:, 0] - z[:, 1]).clamp(min=-20).mean()}


class CollapsePlugin:
    @hookimpl
    def register_strategies(self):
        return [Strategy(name="pushmerger", description="collapses",
                         build=lambda context, options: _PushMerger())]


@pytest.fixture
def toys(register_plugin, plugin_manager):
    register_plugin(_NoNone() if "none" in plugin_manager.components("strategies")
                    else ToyPlugin(), "toys")
    register_plugin(CollapsePlugin(), "collapse")


def _train(tmp_path, strategy, **kwargs):
    source, target = toy_sets(n_source=300, n_target=300)
    args = dict(backbone="tiny", epochs=4, batch_size=16, seed=1, device="cpu", lr=0.02,
                patience=0, run_dir=tmp_path / strategy)
    args.update(kwargs)
    return galmerge.train(source=source, target=target, strategy=strategy, **args)


def test_a_collapsing_run_says_so_while_running_and_in_the_summary(toys, tmp_path, capsys):
    summary = _train(tmp_path, "pushmerger", sets=["pushmerger.weight=5"], quiet=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "looks collapsed" in line]
    assert len(lines) == 1, err  # once, when it sets in; one line
    assert "'merger' predicted for 100% of source val images" in lines[0]
    assert "at chance" in lines[0]
    saved = json.loads((tmp_path / "pushmerger" / "summary.json").read_text())
    assert saved["warnings"] == summary["warnings"]
    assert len(saved["warnings"]) == 1
    assert saved["warnings"][0].startswith("collapse: the selected checkpoint best.pt")
    assert "100% of target val images" in saved["warnings"][0]
    # the evidence is in metrics.csv (label-free prediction shares)
    csv_text = (tmp_path / "pushmerger" / "metrics.csv").read_text()
    assert "source_val_pred_merger" in csv_text and "target_val_pred_merger" in csv_text


def test_a_run_that_learns_has_no_warnings(toys, tmp_path, capsys):
    summary = _train(tmp_path, "none", quiet=False)
    assert summary["metrics"]["source_test"]["accuracy"] > 0.75
    assert summary["warnings"] == []
    assert "collapsed" not in capsys.readouterr().err


def _row(epoch, acc=0.9, share=0.5, target_share=0.5, dacc=None, coeff=None):
    row = {"epoch": epoch, "source_val_accuracy": acc, "source_val_majority": 0.5,
           "source_val_pred_merger": share, "target_val_pred_merger": target_share}
    if dacc is not None:
        row.update(diag_domain_acc=dacc, diag_grl_coeff=coeff)
    return row


def test_a_one_epoch_dip_is_not_a_collapse_but_a_lasting_one_is_reported_once():
    dip = [_row(1), _row(2, acc=0.51), _row(3)]
    assert collapse_signs(dip[1]) and not any(
        collapse_warning(dip[: i + 1]) for i in range(len(dip))
    )
    assert run_warnings(dip, best_epoch=3) == []
    lasting = [_row(1), _row(2, 0.5, 1.0, 0.0), _row(3, 0.5, 1.0, 0.0), _row(4, 0.5, 1.0, 0.0)]
    said = [collapse_warning(lasting[: i + 1]) for i in range(len(lasting))]
    assert said[:2] == [None, None] and said[3] is None
    assert "'non-merger' predicted for 100% of target val images" in said[2]


def test_a_saturated_discriminator_at_full_adversarial_weight_is_a_symptom():
    early = _row(2, dacc=1.0, coeff=0.3)  # normal before the GRL ramps up
    assert collapse_signs(early) == []
    late = [_row(5, dacc=0.999, coeff=0.95), _row(6, dacc=1.0, coeff=0.97)]
    warning = collapse_warning(late)
    assert "domain discriminator saturated" in warning
    assert "dann.feature_loss=inverted" in warning


def test_a_learned_source_with_a_one_class_target_is_called_the_domain_gap():
    """Source-only `none` on the built-in pair: the source is learned, every target image is
    called a merger; that is the domain gap, not a classifier that fails to learn."""
    rows = [_row(1), _row(2, target_share=1.0), _row(3, target_share=1.0)]
    warning = collapse_warning(rows)
    assert "100% of target val images" in warning and "domain gap" in warning
    assert "not learning" not in warning
    [saved] = run_warnings(rows, best_epoch=3)
    assert "domain gap" in saved and "not learning" not in saved
    both = [_row(1), _row(2, 0.5, 1.0, 1.0), _row(3, 0.5, 1.0, 1.0)]
    assert "not learning" in collapse_warning(both)


def test_an_adapted_run_with_a_one_class_target_is_not_told_to_adapt():
    """A dann run whose alignment put every target image in one class (seen at n=1000 on the
    held-out pairs, stop 32): the advice is about the alignment, not "adapt with a strategy"."""
    rows = [{**_row(e, target_share=0.99), "loss_ce": 0.2, "loss_dann": 0.06} for e in (1, 2, 3)]
    [saved] = run_warnings(rows, best_epoch=3, adapts=True)
    assert "99% of target val images" in saved and "the run adapts" in saved
    assert "--select-by im" in saved and "adapt with a strategy" not in saved
    assert "the run adapts" in collapse_warning(rows, adapts=True)
    # a run that reads no target (none, fisher alone) is still told about the domain gap
    [source_only] = run_warnings(rows, best_epoch=3)
    assert "domain gap" in source_only and "the run adapts" not in source_only


def test_train_quiet_still_prints_the_collapse_line_on_stderr(toys, tmp_path):
    """--quiet drops the progress display and the results table, not the warning that the run
    is useless: the closing collapse line goes to stderr (stdout stays empty)."""
    from click.testing import CliRunner

    from galmerge.cli import cli

    result = CliRunner().invoke(cli, [
        "train", "--source", "toy:source?n=300", "--target", "toy:target?n=300",
        "--backbone", "tiny", "--strategy", "pushmerger", "--set", "pushmerger.weight=5",
        "--epochs", "4", "--batch-size", "16", "--seed", "1", "--device", "cpu", "--lr", "0.02",
        "--patience", "0", "--run-dir", str(tmp_path / "q"), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert saved["warnings"] and saved["warnings"][0].startswith("collapse: ")
    assert saved["warnings"][0] in result.stderr.replace("\n", " ")
    assert result.stdout == ""

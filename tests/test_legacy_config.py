"""A run's config.toml from an older galmerge, which lacks settings added since, read at the
values its run trained with (galmerge.config.legacy)."""

from __future__ import annotations

from galmerge.config.legacy import LEGACY_VALUES, config_path, with_legacy_values
from galmerge.config.resolve import resolve_config


def test_every_legacy_value_is_a_valid_setting_of_its_strategy_or_backbone(plugin_manager):
    """A key in the table that no longer exists, or a value today's checks refuse, is a typo."""
    for key in LEGACY_VALUES:
        head, _, rest = key.partition(".")
        record = {"strategy": rest.split(".")[0]} if head == "strategies" else {}
        if head == "backbones":
            record = {"backbone": rest.split(".")[0]}
        filled = with_legacy_values({"source": "toy:source", "target": "toy:target", **record})
        resolved = resolve_config(file=filled)
        node = resolved
        for part in config_path(key):
            node = node[part]
        assert node == LEGACY_VALUES[key], key

def test_an_older_preset_runs_record_keeps_one_adam_group(plugin_manager):
    """A preset's learning-rate multipliers sit below the record's filled ``{"*": 1.0}``: the
    ones the preset pins today are filled at 1 too (runs before them had one Adam group)."""
    record = {"source": "toy:source", "target": "toy:target", "strategy": "mmd+fisher+entropy",
              "backbone": "deepmerge", "preset": "deepmerge2-sim-real-tl"}
    config = resolve_config(file=record, legacy=True)
    assert config["lr_multipliers"] == {"*": 1.0, "fisher.centers": 1.0}
    assert (config["epoch_steps"], config["init_fresh_strategies"]) == ("floor", [])
    assert config["strategies"]["entropy"]["include_source"] is False
    today = resolve_config(file=record)
    assert today["lr_multipliers"] == {"fisher.centers": 10.0}
    assert (today["epoch_steps"], today["init_fresh_strategies"]) == ("ceil", ["fisher"])

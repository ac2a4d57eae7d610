"""The plugin contract: everything a plugin author's code meets, re-exported from ``galmerge``.

- ``hookspecs``: the four hooks (``register_backbones/strategies/surveys/commands``), when each runs.
- ``records``: ``Backbone``, ``Strategy``, ``Survey``, the records the hooks return.
- ``strategy_api``: ``StrategyContext`` and ``StepInputs``, what a strategy's loss sees.
- ``options``: ``resolve_options``, the option checking shared by built-in and third-party plugins.
- ``imageset``: ``ImageSet``/``LazyImages``, what a survey's ``load`` returns.
- ``cutouts``: the ``CutoutService`` protocol and its request/result types (classification).
- ``manager``: the plugin manager; ``BUILTIN_PLUGINS`` is the one list of built-in plugins.

May import: ``galmerge.errors`` and the root ``galmerge`` package (its version) only. Modules
here stay cheap to import (no torch at module level): the CLI loads them to list components.
"""

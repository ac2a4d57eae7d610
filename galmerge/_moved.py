"""Old module paths that plugins built before the layout change (issue 15) import, for one release.

Such a plugin says ``from galmerge.records import Strategy``; the module now lives at
``galmerge.plugin.records``. The old name is an alias of the same module object (not a copy),
so records, exceptions and classes are identical under both names. New code imports from
``galmerge`` itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old path -> new path; only paths that released plugins imported
MOVED: dict[str, str] = {
    "galmerge.records": "galmerge.plugin.records",
    "galmerge.cutouts": "galmerge.plugin.cutouts",
    "galmerge.http_retry": "galmerge.io.http",
    "galmerge.losses.options": "galmerge.plugin.options",
    "galmerge.sdss_cutouts": "galmerge.surveys.sdss.cutouts",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        # the import system overwrites __spec__ with the alias's; exec_module puts it back
        module.__dict__.setdefault("_galmerge_spec", module.__spec__)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__dict__["_galmerge_spec"]


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        # first: an old path must resolve to this galmerge even where another finder knows it
        sys.meta_path.insert(0, _Alias())

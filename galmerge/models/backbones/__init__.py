"""Feature extractors behind the built-in backbone plugins (``galmerge.models.backbones.plugin``).

Each module imports torch at the top; the plugin module imports them only inside its builders.
"""

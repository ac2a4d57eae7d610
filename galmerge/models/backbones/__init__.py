"""Feature extractors behind the built-in backbone plugins (``galmerge.builtin.backbones``).

Each module imports torch at the top; the plugin module imports them only inside its builders.
"""

"""Built-in plugins. Each module implements hooks exactly as a third-party plugin would.

Modules here must stay cheap to import (no torch at module level): the CLI loads them to
list commands and components.
"""

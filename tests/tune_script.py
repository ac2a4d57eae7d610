"""`galmerge` CLI with the toy plugin registered, for subprocess tests of `galmerge tune`.

usage: python tune_script.py [--slow] galmerge-args...   (--slow: 0.5 s per training batch, so
a parent can kill the process in the middle of a trial)
"""

from __future__ import annotations

import sys
import time

import train_toys

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--slow":
        argv = argv[1:]
        import galmerge.data.batches as b

        original = b.TensorBatches.next

        def slow_next(self):  # type: ignore[no-untyped-def]
            time.sleep(0.5)
            return original(self)

        b.TensorBatches.next = slow_next  # type: ignore[method-assign]
    train_toys.register()
    from galmerge.cli import cli

    cli.main(args=argv, prog_name="galmerge")

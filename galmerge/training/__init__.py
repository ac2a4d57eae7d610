"""The trainer behind `galmerge train` and `galmerge.train(...)`."""

from galmerge.training.loop import train

__all__ = ["train"]

"""Errors a user can fix. The CLI turns these into exit code 2 without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the recipe, the data, a path or the machine that the user can fix.

    The message names the file, key or record and says what to do.
    """


class RecipeError(UserError):
    """A recipe failed validation; holds every problem found, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {count}\n{body}")

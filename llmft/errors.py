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


class MachineError(UserError):
    """A recipe this machine (its devices, packages or files) cannot run; holds every problem found,
    as (dotted.key, problem) pairs, under a header saying which machine they are about."""

    def __init__(self, header: str, problems: list[tuple[str, str]], footer: str = ""):
        self.problems = problems
        body = "\n".join(f"  - {key}: {problem}" if key else f"  - {problem}" for key, problem in problems)
        super().__init__(f"{header}\n{body}" + (f"\n{footer}" if footer else ""))


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, signal_name: str, checkpoint: str | None):
        self.signal_name, self.checkpoint = signal_name, checkpoint
        where = f"checkpoint written: {checkpoint}" if checkpoint else "no checkpoint could be written"
        super().__init__(f"{signal_name}: training stopped; {where}. Continue with training.resume_from_checkpoint=auto")


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; training stopped before saving the broken state."""

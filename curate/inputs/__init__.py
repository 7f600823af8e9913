"""Inputs, split by job: files (resolving paths) -> parse (reading any format) -> plan (units, run-wide
duplicate flags) -> rows (a unit's first ledger rows) -> prefetch (the planner's flags as drop statuses)."""


class InputError(ValueError):
    """An input file cannot be used; the message names the file and what was found."""

"""Traces of a project: its workers' span files, read back and arranged as trees.

No click or rich here: ``workers trace``, ``workers logs --trace/--job`` and the dashboard
render what these functions return.
"""

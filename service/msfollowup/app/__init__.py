"""Use cases: what a person or a machine client asks of the system, one transaction each.

The adapters (web, CLI) call these functions; they never query tables themselves.
"""

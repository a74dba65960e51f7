"""Pure follow-up rules: interval rules (data models), the plan model, and the due-exam computation.

No database, network or file access beyond loading the packaged/site rule files.
"""

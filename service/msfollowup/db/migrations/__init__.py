"""Alembic migrations of the index database, shipped inside the package and run through Alembic's
Python API (see msfollowup.schema); no alembic.ini is needed on a node."""

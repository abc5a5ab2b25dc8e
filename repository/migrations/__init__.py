"""Alembic migrations of the catalog schema (run by repository.catalog at open)."""

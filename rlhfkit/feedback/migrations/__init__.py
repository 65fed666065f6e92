"""Alembic migrations of the feedback store (run by :func:`rlhfkit.feedback.store.upgrade`)."""

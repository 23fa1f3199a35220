"""Storage backends. SQLite is the embedded default."""

from predictor.store.sqlite import SQLiteStore

Store = SQLiteStore

__all__ = ["SQLiteStore", "Store"]

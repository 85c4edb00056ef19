"""A run directory's record: what a run is (its identity, inside every checkpoint and beside
them), who works in it (the lock), how a sweep's jobs ended, and which process records all this.
Plain Python below the entry points: they call it, it calls none of them."""

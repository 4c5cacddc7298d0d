"""Speed measurements: each a ratio to a baseline timed in the same run."""

"""Results as files: record one run's results.json; later, aggregate many."""

"""Speech and noise sources: corpus indexing, splits, synthetic noise."""

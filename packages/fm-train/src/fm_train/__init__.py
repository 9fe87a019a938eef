"""One training loop for flow-matching models: EMA, schedules, atomic checkpoints, resume, NaN guard."""

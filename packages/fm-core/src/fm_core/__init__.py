"""Flow-matching core: probability paths, schedulers, time samplers, couplings, loss, ODE solvers, likelihood, guidance."""

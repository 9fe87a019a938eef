"""Flow-matching core: probability paths, schedulers, time samplers, couplings, loss, ODE solvers,
likelihood, guidance.

Time convention everywhere: t = 0 is the source (standard Gaussian noise, x0), t = 1 is the data
(x1); sampling integrates t from 0 to 1, encoding from 1 to 0. Velocity models are called as
``model(x, t, y)`` with x [B, ...], t float [B] in [0, 1] and y int64 [B], or as ``model(x, t)``
when there are no labels (:class:`VelocityField`). :func:`sample` draws from a trained model.
"""

from ._internal import VelocityField
from .coupling import (
    COUPLINGS,
    CoupledBatch,
    Coupling,
    ExactOTCoupling,
    IndependentCoupling,
    SinkhornCoupling,
    get_coupling,
    sinkhorn_plan,
    squared_distances,
    transport_cost,
)
from .guidance import CFGVelocity
from .likelihood import LikelihoodResult, bits_per_dim, log_likelihood
from .loss import FlowMatchingLoss, batch_marginal_target, check_batch_labels, check_label_args, shard_slice
from .marginal import EmpiricalMarginalVelocity, gaussian_marginal_velocity
from .meanflow import (
    AverageVelocityField,
    InstantaneousVelocity,
    MeanFlowLoss,
    call_average_velocity,
    flow_map_solve,
    meanflow_target,
)
from .paths import AffinePath, CondOTPath, PathSample
from .posterior import posterior_mean
from .sampling import FLOW_MAP, SampleResult, balanced_labels, draw_source, resolve_labels, sample
from .schedulers import (
    SCHEDULERS,
    CondOTScheduler,
    CosineScheduler,
    PolynomialScheduler,
    Scheduler,
    SchedulerOutput,
    VPScheduler,
    get_scheduler,
)
from .solvers import (
    ADAPTIVE_METHODS,
    FIXED_METHODS,
    ODESolution,
    evals_per_step,
    fit_nfe,
    solve_ode,
    steps_for_nfe,
)
from .time_samplers import (
    TIME_SAMPLERS,
    LogitNormalTime,
    StratifiedTime,
    TimeSampler,
    UniformTime,
    UShapedTime,
    get_time_sampler,
)

__version__ = "0.3.0"

__all__ = [
    # the model signature
    "VelocityField",
    # schedulers
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "CosineScheduler",
    "VPScheduler",
    "PolynomialScheduler",
    "SCHEDULERS",
    "get_scheduler",
    # paths
    "PathSample",
    "AffinePath",
    "CondOTPath",
    # time samplers
    "TimeSampler",
    "UniformTime",
    "LogitNormalTime",
    "StratifiedTime",
    "UShapedTime",
    "TIME_SAMPLERS",
    "get_time_sampler",
    # couplings
    "CoupledBatch",
    "Coupling",
    "IndependentCoupling",
    "ExactOTCoupling",
    "SinkhornCoupling",
    "COUPLINGS",
    "get_coupling",
    "transport_cost",
    "squared_distances",
    "sinkhorn_plan",
    # loss, guidance, closed-form velocities
    "FlowMatchingLoss",
    "batch_marginal_target",
    "shard_slice",
    "check_batch_labels",
    "check_label_args",
    "CFGVelocity",
    "EmpiricalMarginalVelocity",
    "gaussian_marginal_velocity",
    "posterior_mean",
    # two-time (average-velocity) models: MeanFlow and the flow-map sampler
    "AverageVelocityField",
    "InstantaneousVelocity",
    "MeanFlowLoss",
    "meanflow_target",
    "call_average_velocity",
    "flow_map_solve",
    "FLOW_MAP",
    # ODE solvers, sampling and likelihood
    "ODESolution",
    "solve_ode",
    "FIXED_METHODS",
    "ADAPTIVE_METHODS",
    "steps_for_nfe",
    "evals_per_step",
    "fit_nfe",
    "SampleResult",
    "sample",
    "balanced_labels",
    "resolve_labels",
    "draw_source",
    "LikelihoodResult",
    "log_likelihood",
    "bits_per_dim",
]

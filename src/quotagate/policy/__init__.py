"""Policy: which limits apply to a request."""

from ._policy import SHORTHANDS, AppliedLimits, Policy, check_overrides

__all__ = ["SHORTHANDS", "AppliedLimits", "Policy", "check_overrides"]

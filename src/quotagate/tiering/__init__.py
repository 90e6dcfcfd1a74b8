"""Model tiering: a routed model's requests classified and sent to the cheapest model that can
answer them (_planner, with _rules and _semantic), and a cheaper model serving what a tenant's
limits would refuse (_downgrade).

``_semantic`` is imported only where a routed model has examples: it brings numpy."""

from ._downgrade import Downgrades
from ._planner import RoutePlan, RoutePlanner
from ._rules import ClassRules, RequestFacts, last_user_text

__all__ = ["ClassRules", "Downgrades", "RequestFacts", "RoutePlan", "RoutePlanner", "last_user_text"]

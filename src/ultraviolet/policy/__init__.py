"""The node policy: one declarative TOML file describing what is on a node."""

from ultraviolet.policy.load import PolicyIssue, PolicyValidationError, load_policy, parse_policy
from ultraviolet.policy.model import NodePolicy

__all__ = ["NodePolicy", "PolicyIssue", "PolicyValidationError", "load_policy", "parse_policy"]

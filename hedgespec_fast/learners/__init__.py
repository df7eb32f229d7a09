"""Drafter-selection policies and the names ``generate(policy=...)`` accepts."""
from __future__ import annotations

from .bandits import EXP3Spec, MetaSDUCB, STOP_RULES, TapOut, UCBSpec
from .base import Policy, RoundOutcome
from .full import ExpertPolicy, HedgeSpecSelector
from .static import Fixed, Oracle, Random

POLICIES = (
    "hedgespec",  # NormalHedge + QPM-D, expected-length loss (full information)
    "hedge",
    "adanormalhedge",
    "ucbspec",
    "exp3spec",
    "metasd",
    "tapout",
    "fixed:<i>",
    "random",
    "oracle",
)

__all__ = [
    "POLICIES", "make_policy", "Policy", "RoundOutcome", "ExpertPolicy", "HedgeSpecSelector", "UCBSpec", "EXP3Spec",
    "MetaSDUCB", "TapOut", "STOP_RULES", "Fixed", "Random", "Oracle",
]


def _drafter_policy(name: str, n: int, config, kwargs: dict) -> Policy:
    # the config's learner options, where policy_kwargs (the more specific) does not say otherwise
    expert = {**dict(loss=config.loss, level=config.level, choice=config.choice, backend=config.backend,
                     objective=config.objective), **kwargs}
    if name == "hedgespec":
        return HedgeSpecSelector(n, **expert)
    if name in ("hedge", "adanormalhedge", "normalhedge"):
        if expert.setdefault("algo", name) != name:
            raise ValueError(f"policy {name!r} is the {name!r} learner, but policy_kwargs asks for algo "
                             f"{expert['algo']!r}: name that one as the policy")
        return ExpertPolicy(n, **expert)
    if name == "ucbspec":
        return UCBSpec(n, **kwargs)
    if name == "exp3spec":
        return EXP3Spec(n, **kwargs)
    if name == "metasd":
        return MetaSDUCB(n, **kwargs)
    if name == "random":
        return Random(n)
    if name == "oracle":
        return Oracle(n)
    if name.startswith("fixed:"):
        try:
            index = int(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad policy {name!r}: write fixed:<index>, e.g. fixed:0") from None
        return Fixed(n, index)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)} (and '<policy>+tapout')")


def make_policy(spec, n_drafters: int, config, device=None) -> Policy:
    """A policy object from a name in ``POLICIES`` (``"<name>+tapout"`` adds TapOut's stopping), or ``spec`` itself.

    A full-information learner made from a name lives on ``device`` (the target's), so its update runs where γ is
    computed (the Triton kernel on a GPU) and γ never crosses to the host. Objects passed in stay where they are.
    """
    if isinstance(spec, Policy):
        return spec
    policy = _named_policy(spec, n_drafters, config)
    inner = policy.drafter_policy if isinstance(policy, TapOut) else policy
    if device is not None and isinstance(inner, ExpertPolicy):
        inner.to(device)
    return policy


def _named_policy(spec, n_drafters: int, config) -> Policy:
    if not isinstance(spec, str):
        raise TypeError(f"policy must be a name from hs.POLICIES or a Policy object, got {type(spec).__name__}")
    name = spec.strip().lower()
    kwargs = dict(config.policy_kwargs)
    if name == "tapout":
        return TapOut(n_drafters, None, **kwargs)
    if name.endswith("+tapout"):
        inner = _drafter_policy(name[: -len("+tapout")], n_drafters, config, {})
        if isinstance(inner, Oracle):
            raise ValueError("the oracle cannot be composed with TapOut")
        return TapOut(n_drafters, inner, **kwargs)
    try:
        return _drafter_policy(name, n_drafters, config, kwargs)
    except TypeError as error:  # a policy_kwargs name the policy has no parameter for
        if not kwargs or "unexpected keyword argument" not in str(error):
            raise
        raise TypeError(f"policy {name!r} does not take policy_kwargs {sorted(kwargs)}: {error}") from None

"""Kernels of hedgespec-fast, installed as ``hedgespec_fast.kernels``.

``acceptance_probs`` (γ of every drafter at every verified position) and ``hedge_update`` (loss → learner state →
weights → choice) each have a Triton implementation and a plain-torch twin in ``reference.py`` with the same
signature. ``backend="auto"`` takes Triton for CUDA tensors when Triton is importable and torch otherwise;
``"triton"`` / ``"torch"`` force one; the learner update on CPU tensors runs in NumPy (``host.py``, backend
``"host"``, what ``"auto"`` picks there). The environment variable ``HEDGESPEC_BACKEND`` (auto | triton | torch)
overrides the argument, e.g. to run the Triton path on CPU under ``TRITON_INTERPRET=1``.

Fused entry points (same dispatch, twins in ``reference.py``): ``hedge_update_from_gamma`` (γ window → losses →
update → choice, one launch) and ``acceptance_and_update`` (the whole selection step, one launch). Every entry point
takes ``out=`` (the result is written there: tests poison it with NaN first).

Importing this package is cheap: Triton is imported (and kernels compiled) only on first use.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from . import reference
from .reference import (ALGOS, LEVELS, LOSSES, MODES, choose, expected_length_losses, gamma_losses, throughput_awake,
                        throughput_losses, warp_logits)

BACKENDS = ("auto", "triton", "torch", "host")
ENV_BACKEND = "HEDGESPEC_BACKEND"

__all__ = [
    "acceptance_probs",
    "hedge_update",
    "hedge_update_from_gamma",
    "acceptance_and_update",
    "expected_length_losses",
    "gamma_losses",
    "throughput_losses",
    "throughput_awake",
    "throughput_update",
    "warp_logits",
    "choose",
    "resolve_backend",
    "triton_available",
    "MODES",
    "ALGOS",
    "LOSSES",
    "LEVELS",
    "BACKENDS",
]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``triton`` imports (it may still lack a GPU: then only ``TRITON_INTERPRET=1`` runs it)."""
    try:
        importlib.import_module("triton")
        return True
    except Exception:  # noqa: BLE001 - any import failure means "no triton"
        return False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, learner: bool = False) -> str:
    """Return ``"triton"``, ``"torch"`` or (``learner``: the learner update, whose CPU path is NumPy) ``"host"`` for
    tensors on ``device``; the env variable wins over ``backend``. ``"host"`` asked for γ means torch."""
    chosen = os.environ.get(ENV_BACKEND, "").strip().lower() or backend
    if chosen not in BACKENDS:
        raise ValueError(f"unknown kernel backend {chosen!r}; expected one of {BACKENDS} (argument or ${ENV_BACKEND})")
    if chosen == "host":
        if device.type != "cpu":
            raise RuntimeError(f"backend='host' runs the learner update on the CPU, got {device.type} tensors")
        return "host" if learner else "torch"
    if chosen == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "host" if learner and device.type == "cpu" else "torch"
    if chosen == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' was asked for but triton is not installed: pip install triton")
        if device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors, got {device.type}; set TRITON_INTERPRET=1 to run the kernels "
                "on the CPU through Triton's interpreter (slow, exact)"
            )
    return chosen


def _triton_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def acceptance_probs(target_logits, drafter_logits, temperature=1.0, mode="tv", top_k=0, top_p=1.0, top_l=1,
                     backend="auto", *, out=None):
    """γ ``[N, m]`` fp32 of every drafter at every position; see :func:`reference.acceptance_probs`."""
    kwargs = dict(temperature=temperature, mode=mode, top_k=top_k, top_p=top_p, top_l=top_l, out=out)
    if resolve_backend(backend, target_logits.device) == "triton":
        return _triton_module("acceptance").acceptance_probs(target_logits, drafter_logits, **kwargs)
    return reference.acceptance_probs(target_logits, drafter_logits, **kwargs)


def hedge_update(losses, regret, abs_regret, cum_loss, weights, step, *, algo="normalhedge", eta=None, prior=None,
                 u=None, backend="auto", out=None, awake=None):
    """Apply ``T`` learner rounds in place and return the next choice; see :func:`reference.hedge_update`.

    ``awake [T, N]`` (sleeping experts) is exact on the torch and host paths; the Triton kernel has no mask, so there
    the asleep entries are charged the awake mean under the weights before the call (exact for T = 1)."""
    kwargs = dict(algo=algo, eta=eta, prior=prior, u=u, out=out)
    chosen = resolve_backend(backend, weights.device, learner=True)
    if chosen == "triton":
        if awake is not None:
            losses = torch.stack([reference._charge_asleep(row, weights, mask)
                                  for row, mask in zip(losses.float(), awake.bool())])
        return _triton_module("hedge").hedge_update(losses, regret, abs_regret, cum_loss, weights, step, **kwargs)
    if chosen == "host":
        return _triton_module("host").hedge_update(losses, regret, abs_regret, cum_loss, weights, step, awake=awake,
                                                   **kwargs)
    return reference.hedge_update(losses, regret, abs_regret, cum_loss, weights, step, awake=awake, **kwargs)


def throughput_update(gamma, awake, draft_lens, arm_seconds, regret, abs_regret, cum_loss, weights, step, *,
                      level="token", algo="normalhedge", eta=None, u=None, backend="auto", out=None,
                      position_seconds=0.0, specialists=None, observed=()):
    """The throughput learner's update: losses of a γ window ``[N, S]`` (NaN = not evaluated) over the (drafter, K)
    arms from their measured seconds (a round's, plus ``position_seconds`` per emitted position), sleeping arms
    masked (and mapped onto context specialists, ``specialists = (arm_index, arm_context, sleepers)``: see
    :func:`reference.contextual_arms`), then the learner rounds and the next choice. Host (NumPy) on CPU state;
    elsewhere the torch functions :func:`reference.throughput_losses` / :func:`reference.throughput_awake` and
    :func:`hedge_update` (Triton on CUDA). ``observed``: ``(t, arm, tokens)`` of played arms whose ÂL γ leaves
    unknown (see :func:`reference.throughput_losses`)."""
    if resolve_backend(backend, weights.device, learner=True) == "host":
        return _triton_module("host").throughput_update(gamma, awake, draft_lens, arm_seconds, regret, abs_regret,
                                                        cum_loss, weights, step, level=level, algo=algo, eta=eta,
                                                        u=u, out=out, position_seconds=position_seconds,
                                                        specialists=specialists, observed=observed)
    device = weights.device
    losses = reference.throughput_losses(gamma.to(device), draft_lens, arm_seconds, position_seconds, observed)
    arm_awake = reference.throughput_awake(awake.to(device), draft_lens) & losses.isfinite()
    if specialists is not None:
        losses, arm_awake = reference.contextual_arms(losses, arm_awake, awake.to(device), *specialists)
    losses = losses.nan_to_num(0.0)
    if level == "chunk" and losses.shape[0] > 1:  # the mean over the rounds each arm was awake
        counts = arm_awake.sum(dim=0, keepdim=True)
        losses = (losses * arm_awake).sum(dim=0, keepdim=True) / counts.clamp(min=1)
        arm_awake = counts > 0
    return hedge_update(losses, regret, abs_regret, cum_loss, weights, step, algo=algo, eta=eta, u=u,
                        backend=backend, out=out, awake=None if bool(arm_awake.all()) else arm_awake)


def hedge_update_from_gamma(gamma, regret, abs_regret, cum_loss, weights, step, *, draft_len=1, loss="expected_length",
                            level="token", algo="normalhedge", eta=None, prior=None, u=None, backend="auto", out=None):
    """Losses of a γ window ``[N, S]`` + ``T`` learner rounds + next choice (one launch on Triton); see
    :func:`reference.hedge_update_from_gamma`."""
    kwargs = dict(draft_len=draft_len, loss=loss, level=level, algo=algo, eta=eta, prior=prior, u=u, out=out)
    chosen = resolve_backend(backend, weights.device, learner=True)
    if chosen == "triton":
        return _triton_module("hedge").hedge_update_from_gamma(gamma, regret, abs_regret, cum_loss, weights, step,
                                                               **kwargs)
    if chosen == "host":
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
        losses = gamma_losses(gamma, loss, draft_len)
        if level == "chunk" and losses.shape[0] > 1:
            losses = losses.mean(dim=0, keepdim=True)
        return hedge_update(losses, regret, abs_regret, cum_loss, weights, step, algo=algo, eta=eta, prior=prior, u=u,
                            backend="host", out=out)
    return reference.hedge_update_from_gamma(gamma, regret, abs_regret, cum_loss, weights, step, **kwargs)


def acceptance_and_update(target_logits, drafter_logits, gamma_history, regret, abs_regret, cum_loss, weights, step, *,
                          temperature=1.0, mode="tv", top_k=0, top_p=1.0, top_l=1, draft_len=1, loss="expected_length",
                          level="token", algo="normalhedge", eta=None, prior=None, u=None, backend="auto", out=None):
    """The whole selection step (γ of the new positions into ``gamma_history``, losses, learner rounds, choice), one
    launch on Triton; see :func:`reference.acceptance_and_update`."""
    kwargs = dict(temperature=temperature, mode=mode, top_k=top_k, top_p=top_p, top_l=top_l, draft_len=draft_len,
                  loss=loss, level=level, algo=algo, eta=eta, prior=prior, u=u, out=out)
    state = (regret, abs_regret, cum_loss, weights, step)
    if resolve_backend(backend, target_logits.device) == "triton":
        return _triton_module("acceptance").acceptance_and_update(target_logits, drafter_logits, gamma_history, *state,
                                                                  **kwargs)
    return reference.acceptance_and_update(target_logits, drafter_logits, gamma_history, *state, **kwargs)

"""Kubernetes-style conditions on EdgeDevice status (type, status, reason, message).

`lastTransitionTime` changes only when the status flips, as the API conventions ask,
so a condition re-asserted on every reconcile does not churn the object.
"""

from datetime import datetime
from typing import Literal

from controller.device import Condition

ConditionStatus = Literal["True", "False", "Unknown"]


def set_condition(
    conditions: tuple[Condition, ...],
    kind: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
) -> tuple[Condition, ...]:
    """Conditions with `kind` set; unchanged (the same tuple) when nothing differs."""
    current = next((c for c in conditions if c.type == kind), None)
    if current and (current.status, current.reason, current.message) == (status, reason, message):
        return conditions
    changed_at = (
        now if current is None or current.status != status else current.last_transition_time
    )
    updated = Condition(
        type=kind, status=status, reason=reason, message=message, last_transition_time=changed_at
    )
    return (*tuple(c for c in conditions if c.type != kind), updated)


def clear_condition(conditions: tuple[Condition, ...], kind: str) -> tuple[Condition, ...]:
    """Conditions without `kind` (the same tuple when it was absent)."""
    if all(c.type != kind for c in conditions):
        return conditions
    return tuple(c for c in conditions if c.type != kind)

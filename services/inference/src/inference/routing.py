"""The order an alias's targets are tried in, by its strategy (ModelAlias.strategy).

- `ordered`: as listed; each next one when the one before fails (failover.py).
- `weighted`: the first is chosen by smooth weighted round robin (nginx's): over any run
  of calls each target is chosen in proportion to its weight, interleaved, exactly (no
  randomness: 1,000 calls over weights 3 and 1 are 750 and 250); the others follow in
  order of weight, for failover. The state is per replica: N replicas each split their
  own calls by the weights, so the whole splits by them too.
"""

from __future__ import annotations

from collections.abc import Sequence

from inference.failover import Target

# Aliases whose weighted state is kept (per owner and alias); past it the state restarts.
MAX_WEIGHTED = 10_000


class Routing:
    """Per replica: the weighted round robin's state of each weighted alias."""

    def __init__(self) -> None:
        self._current: dict[tuple[object, ...], list[int]] = {}

    def order(
        self, key: tuple[object, ...], strategy: str, targets: Sequence[tuple[Target, int]]
    ) -> list[Target]:
        """The targets, (target, weight) each, in the order to try them for one call.
        `key` names the alias (and its owner, and its targets: a change restarts)."""
        if strategy != "weighted" or len(targets) < 2:
            return [target for target, _ in targets]
        current = self._current.get(key)
        if current is None:
            if len(self._current) >= MAX_WEIGHTED:
                self._current.clear()
            current = self._current[key] = [0] * len(targets)
        total = 0
        for i, (_, weight) in enumerate(targets):
            current[i] += weight
            total += weight
        chosen = max(range(len(targets)), key=current.__getitem__)
        current[chosen] -= total
        rest = sorted((i for i in range(len(targets)) if i != chosen),
                      key=lambda i: -targets[i][1])  # fmt: skip
        return [targets[chosen][0], *(targets[i][0] for i in rest)]

"""The search space as a model: its parameters (`Param`, with `when:` conditions) in sampling order,
which are active given the others, and the grid. Plain data: the spec builds it, study.search
hands it to Optuna, and the dashboards read it back from the study run's `study.json`.

    p = Param("target.sigma", "uniform", [1.0, 6.0], when={"target.schedule": ["fixed"]})
    active(p, {"target.schedule": "adaloss"})    # False: adaloss trials keep the base σ
"""

from __future__ import annotations

from dataclasses import dataclass, field

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "quniform")
FINITE = ("choice", "int", "quniform")  # what the grid sampler can enumerate
GRID_LIMIT = 100_000  # a grid larger than this is almost surely a mistake (an int range, say)


@dataclass
class Param:
    path: str  # dotted trial-config path
    kind: str  # one of DISTRIBUTIONS
    args: list  # choice: the values; quniform: [low, high, step]; others: [low, high]
    when: dict[str, list] = field(default_factory=dict)  # other path -> the values it must take (ANDed)

    def values(self) -> list:
        """Every value of a finite distribution (choice, int, quniform), in order."""
        if self.kind == "choice":
            return list(self.args)
        low, high = self.args[0], self.args[1]
        step = self.args[2] if self.kind == "quniform" else 1
        n = int(round((high - low) / step))
        return [type(low)(low + i * step) if isinstance(low, int) else round(low + i * step, 12) for i in range(n + 1)]

    def describe(self) -> str:
        cond = "".join(f" when {k} in {v}" if len(v) > 1 else f" when {k} = {v[0]}" for k, v in self.when.items())
        return f"{self.kind} {self.args}{cond}"


def active(param: Param, values: dict) -> bool:
    """Whether `param` is sampled, given the values of the parameters sampled before it."""
    return all(k in values and values[k] in allowed for k, allowed in param.when.items())


def enumerate_grid(space: dict[str, Param]) -> list[dict]:
    """Every point of a finite space, honouring `when:` (a parameter appears only where its
    conditions hold). Raises ValueError past GRID_LIMIT points."""
    points = [{}]
    for p in space.values():  # sampling order: conditions are decided before what they gate
        grown = []
        for point in points:
            grown += [{**point, p.path: v} for v in p.values()] if active(p, point) else [point]
            if len(grown) > GRID_LIMIT:
                raise ValueError(f"the grid has more than {GRID_LIMIT:,} points")
        points = grown
    return points

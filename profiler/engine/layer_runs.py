"""A sequential spec's runs of identical layers, replayed as a few: the time replay of a deep spec.

The time model prices each operator call of the engine's replay (:mod:`profiler.engine.step_time`),
~100 µs of replay per call and ~30 calls per Dense layer. In a run of identical layers (same type,
arguments and input and output shapes) every layer past the first few makes the same calls as the
next, under its own module name: its input, and in backward its output's gradient, is made by a
layer like itself. So the replay runs the spec with each long run cut to :data:`KEEP` layers (its
first two, two copies of its middle, its last two) and writes the calls of the layers cut out as
the second copy's, renamed (:meth:`Shortened.expand`). That is taken only where the two copies
made the same calls, renamed, in every phase, and where they do not the caller replays the whole
spec. The check is on the calls (shapes, strides, dtypes as their bytes, FLOPs, which module, whether
Python issued them), not a proof that every later layer's input is the same as the copies': tests
hold the expanded list equal to the whole replay's for Dense, activation, Conv2D, LSTM and
LayerNormalization runs (tests/test_layer_runs.py). Where it is, call for call and in order, the
times summed from it are the same to the bit.

The optimizers' updates are not cut: a foreach call's bytes are its whole parameter list's, and
Adam reads each parameter's step count; they step the twins of every layer's parameters
(:meth:`Shortened.parameters`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from profiler.engine.predict import trace
from profiler.frontends.spec import ModelSpec, Node

if TYPE_CHECKING:
    from profiler.engine.op_cost import OpCost

#: layers a run is cut to: two before its middle, two copies of it, two after
KEEP = 6
#: the shortest run cut (shorter ones gain little and keep the whole replay's path)
MIN_RUN = 16


@dataclass(frozen=True)
class Run:
    """A run cut short: its two middle copies' module names and the modules the second stands for
    (its own first, in the spec's order)."""
    first: str
    second: str
    stands_for: tuple[str, ...]


@dataclass(frozen=True)
class Shortened:
    """A spec with its long runs cut (``spec``), and what was cut."""
    spec: ModelSpec
    runs: tuple[Run, ...]

    def expand(self, costs: Sequence[OpCost]) -> list[OpCost] | None:
        """The calls of the whole spec's replay from the shortened one's ``costs`` (one run's list:
        inference, or training's forward, loss and backward), or None where a run's middle copies
        did not make the same calls (renamed) in a phase, or made none in a forward phase (their
        module calls would then be counted on a later call: :attr:`OpCost.modules`)."""
        out = list(costs)
        for run in self.runs:
            for phase in dict.fromkeys(c.phase for c in out):
                expanded = _expand_phase(out, phase, run)
                if expanded is None:
                    return None
                out = expanded
        return out

    def parameters(self, module: Any) -> list[Any]:
        """The shortened module's parameters, each of a middle copy once per layer it stands for:
        the whole spec's, in its order (stand-ins of the same shapes, strides and dtypes)."""
        repeats = {run.second: len(run.stands_for) for run in self.runs}
        found: list[Any] = []
        for key, child in module.named_children():
            own = [p for p in child.parameters() if p.requires_grad]
            found.extend(own * repeats.get(key, 1))
        return found


def shorten(spec: ModelSpec, checkpoint: frozenset[str] = frozenset()) -> Shortened | None:
    """``spec`` with each run of at least :data:`MIN_RUN` identical layers cut to :data:`KEEP`;
    None where there is none (or the spec is not sequential, or layers are checkpointed)."""
    from profiler.rules.modules import module_keys

    if checkpoint or not spec.is_sequential:
        return None
    traced = trace(spec)
    keys = module_keys([t.layer.name for t in traced])
    kept: list[Node] = []
    runs: list[Run] = []
    start = 0
    for end in range(1, len(traced) + 1):
        if end < len(traced) and _same(traced[end], traced[start], spec):
            continue
        names = [keys[t.layer.name] for t in traced[start:end]]
        if end - start >= MIN_RUN:
            kept.extend(t.node for t in (*traced[start:start + 4], *traced[end - 2:end]))
            runs.append(Run(names[2], names[3], tuple(names[3:-2])))
        else:
            kept.extend(t.node for t in traced[start:end])
        start = end
    if not runs:
        return None
    previous = spec.inputs[0].name
    nodes = []
    for node in kept:
        nodes.append(dataclasses.replace(node, inputs=((previous, 0),)))
        previous = node.name
    short = dataclasses.replace(spec, nodes=tuple(nodes))
    if module_keys([n.layer.name for n in nodes]) != {n.layer.name: keys[n.layer.name] for n in nodes}:
        return None   # a name's module key depends on the names around it: not cut
    return Shortened(short, tuple(runs))


def _same(a: Any, b: Any, spec: ModelSpec) -> bool:
    """Two traced layers built alike, of the same shapes, trained alike."""
    return (a.layer.type == b.layer.type and a.layer.model is None and b.layer.model is None
            and dict(a.layer.args) == dict(b.layer.args)
            and a.input_shapes == b.input_shapes and a.output_shapes == b.output_shapes
            and (a.layer.name in spec.frozen) == (b.layer.name in spec.frozen))


def _expand_phase(costs: list[OpCost], phase: str, run: Run) -> list[OpCost] | None:
    first, second = _block(costs, phase, run.first), _block(costs, phase, run.second)
    if first is None or second is None:
        return None
    a, b = costs[first], costs[second]
    if not a and phase in ("forward", "inference"):
        return None
    if [_renamed(c, run.first, run.second) for c in a] != b:
        return None
    if not b:
        return costs
    in_order = first.stop == second.start
    if not in_order and second.stop != first.start:
        return None   # calls of another module between the two copies
    names = run.stands_for if in_order else run.stands_for[::-1]
    copies = [_renamed(c, run.second, name) for name in names for c in b]
    return [*costs[:second.start], *copies, *costs[second.stop:]]


def _block(costs: list[OpCost], phase: str, module: str) -> slice | None:
    """Where ``module``'s (and its children's) calls of ``phase`` are, or None where they are
    not one stretch; an empty slice where there are none."""
    inside = [i for i, c in enumerate(costs) if c.phase == phase and _of(c.module, module)]
    if not inside:
        return slice(0, 0)
    if inside[-1] - inside[0] + 1 != len(inside):
        return None
    return slice(inside[0], inside[-1] + 1)


def _of(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _renamed(cost: OpCost, old: str, new: str) -> OpCost:
    return dataclasses.replace(cost, module=new + cost.module[len(old):])

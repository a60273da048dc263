"""Mergeable streaming accumulators: the shape every metric family shares.

An accumulator holds only

* **sum states**: tensors (or lists of tensors, one per layer) that combine by addition, kept in float64;
* **fixed states**: set once by :meth:`Accumulator.setup` from a calibration batch that every process sees
  identically (random projections, target scales); merging checks they agree;
* **reservoirs**: bounded, key-ordered samples (:class:`Reservoir`), merged by keeping the smallest keys.

so one process and ``k`` processes give the same numbers, resume is "save the states", and the evaluate
module and the Space run exactly this code on one batch. The shape follows torchmetrics' ``Metric``
(``add_state`` / ``merge_state``); we do not use it because its ``sync`` all-gathers every state
(``world_size`` times the memory of our multi-GB Gram matrices) where an in-place all-reduce suffices, and it
has no mergeable bounded reservoir.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import numpy as np
import torch

from ..states import LayerStates

if TYPE_CHECKING:  # for annotations only: the engine imports the metrics, never the reverse
    from ..engine import AnalysisConfig

Reduction = Literal["sum", "fixed"]
#: what a family needs captured beyond hidden states and ``z0``
Capture = Literal["attentions", "attention_residuals", "labels"]
PerHead = dict[str, list[list[float] | None]]
StateValue = torch.Tensor | list[torch.Tensor]
AllReduce = Callable[[torch.Tensor], torch.Tensor]
AllGatherObject = Callable[[Any], list[Any]]


class Reservoir:
    """The ``capacity`` items with the smallest keys seen so far (ties in arrival order): a deterministic,
    mergeable sample.

    Because membership depends only on the keys (hashes of example ids), the reservoir holds the same items
    whatever the batch order or the number of processes. Items live in fixed slots: adding a batch writes
    only its entering rows into free or evicted slots, instead of concatenating and re-sorting the whole
    sample every batch (which copied it twice per batch and, through allocator fragmentation, grew resident
    memory to several times the reservoir). ``keys`` and ``data`` give the sample sorted by key;
    :meth:`slots` gives it in slot order without copying, for order-free uses.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._clear()

    def _clear(self) -> None:
        self._n = 0
        self._next_seq = 0
        self._keys = torch.empty(0, dtype=torch.int64)
        self._seq = torch.empty(0, dtype=torch.int64)
        self._data: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self._n

    def _order(self) -> torch.Tensor:
        """Slot indices sorted by (key, arrival)."""
        by_seq = torch.argsort(self._seq[: self._n])
        return by_seq[torch.argsort(self._keys[: self._n][by_seq], stable=True)]

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[: self._n][self._order()]

    @property
    def data(self) -> dict[str, torch.Tensor]:
        order = self._order()
        return {k: v[: self._n][order] for k, v in self._data.items()}

    def slots(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Keys and data in slot order (views, no copy)."""
        return self._keys[: self._n], {k: v[: self._n] for k, v in self._data.items()}

    def add(self, keys: torch.Tensor, **tensors: torch.Tensor) -> None:
        if keys.numel() == 0 or self.capacity <= 0:
            return
        keys = keys.detach().cpu().to(torch.int64)
        new = {k: v.detach().cpu() for k, v in tensors.items()}
        m = keys.numel()
        if not self._data:
            self._keys = torch.empty(self.capacity, dtype=torch.int64)
            self._seq = torch.empty(self.capacity, dtype=torch.int64)
            # untouched slots cost address space only; pages become resident as slots fill
            self._data = {k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in new.items()}
        seq = torch.arange(self._next_seq, self._next_seq + m, dtype=torch.int64)
        self._next_seq += m
        n = self._n
        entering: slice | torch.Tensor
        if n + m <= self.capacity:
            slots, entering = torch.arange(n, n + m), slice(None)
        else:
            all_keys, all_seq = torch.cat([self._keys[:n], keys]), torch.cat([self._seq[:n], seq])
            by_seq = torch.argsort(all_seq)
            keep = by_seq[torch.argsort(all_keys[by_seq], stable=True)][: self.capacity]
            kept = torch.zeros(n + m, dtype=torch.bool)
            kept[keep] = True
            entering = torch.nonzero(kept[n:]).squeeze(1)
            evicted = torch.nonzero(~kept[:n]).squeeze(1)
            slots = torch.cat([torch.arange(n, self.capacity), evicted])[: entering.numel()]
        self._keys[slots] = keys[entering]
        self._seq[slots] = seq[entering]
        for k, v in new.items():
            self._data[k][slots] = v[entering]
        self._n = min(self.capacity, n + m)

    def merge(self, other: Reservoir) -> None:
        self.add(other.keys, **other.data)

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "keys": self.keys, "data": self.data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self._clear()
        self.add(state["keys"], **state["data"])


@dataclass(frozen=True)
class MetricFamily:
    """One metric family as the report sees it; declared once, by the accumulator that computes it.

    Attributes:
        name: the family's name in ``AnalysisConfig.metrics``.
        columns: the per-layer metric columns it fills, in table order.
        per_head_columns: per-layer lists of per-head values (:meth:`Accumulator.per_head`).
        tuning_columns: per-layer hyperparameters it chose (ridge penalties); the table lists them after
            every family's metric columns.
        requires: what it needs captured (:data:`Capture`).
    """

    name: str
    columns: tuple[str, ...] = ()
    per_head_columns: tuple[str, ...] = ()
    tuning_columns: tuple[str, ...] = ()
    requires: tuple[Capture, ...] = ()

    @property
    def all_columns(self) -> tuple[str, ...]:
        return self.columns + self.tuning_columns


class Accumulator:
    """Base class of a metric family's streaming state.

    Subclasses declare :attr:`families` and implement :meth:`setup` (allocate states from a calibration batch),
    :meth:`update` (add one batch) and :meth:`compute` (a pure function of the states returning per-layer
    columns); a family that buffers work between batches also implements :meth:`flush`. Registering the class
    in :mod:`hf_isi.metrics.registry` makes the engine build it and the report list its columns.
    """

    #: the families this accumulator computes: one for most; several when they share statistics (probes and
    #: neural collapse). Its :attr:`name` and :attr:`requires` follow from them.
    families: ClassVar[tuple[MetricFamily, ...]] = ()
    #: the accumulator's key in an analysis (its first family's name)
    name: ClassVar[str] = ""
    #: what its families need captured, any of "attentions", "attention_residuals", "labels"
    requires: ClassVar[tuple[Capture, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.families:
            cls.name = cls.families[0].name
            cls.requires = tuple(dict.fromkeys(r for f in cls.families for r in f.requires))

    @classmethod
    def from_config(cls, config: AnalysisConfig, num_classes: int | None, families: frozenset[str]) -> Accumulator:
        """The accumulator for an analysis that asks for ``families`` (a non-empty subset of this class's
        families); ``num_classes`` is set whenever a family requires labels. Override to read options."""
        return cls()

    def __init__(self) -> None:
        self._reductions: dict[str, Reduction] = {}
        self._reservoirs: dict[str, Reservoir] = {}
        self.num_layers: int | None = None

    # -- state registry --------------------------------------------------------------------------------
    def add_state(self, name: str, value: StateValue, reduction: Reduction = "sum") -> None:
        setattr(self, name, value)
        self._reductions[name] = reduction

    def add_reservoir(self, name: str, capacity: int) -> Reservoir:
        reservoir = Reservoir(capacity)
        self._reservoirs[name] = reservoir
        setattr(self, name, reservoir)
        return reservoir

    @property
    def is_setup(self) -> bool:
        return self.num_layers is not None

    # -- the three methods a family implements -----------------------------------------------------------
    def setup(self, states: LayerStates) -> None:
        """Allocate states. ``states`` must be identical on every process (the calibration batch)."""
        self.num_layers = states.num_layers

    def update(self, states: LayerStates) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Fold work buffered by :meth:`update` into the states (default: nothing is buffered).

        :meth:`merge`, :meth:`sync`, :meth:`state_dict` and :meth:`compute` act on flushed states only; the
        first three flush here, and a family that buffers calls it at the start of its :meth:`compute`.
        """

    def compute(self) -> dict[str, np.ndarray]:
        """Per-layer columns: name -> float array over layers ``-1..L`` (NaN = missing)."""
        raise NotImplementedError

    def scalars(self) -> dict[str, float | None]:
        """Model-level values (not per layer); most families have none."""
        return {}

    def per_head(self) -> PerHead:
        """Per-head curves over layers ``-1..L`` (per layer: the per-head values, or ``None`` if missing), keyed
        by the families' ``per_head_columns``; most families have none."""
        return {}

    # -- combination -------------------------------------------------------------------------------------
    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other``'s states into this one (in place) and return self."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.flush()
        other.flush()
        for name, reduction in self._reductions.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            for a, b in zip(_as_list(mine), _as_list(theirs)):
                if reduction == "sum":
                    a.add_(b.to(a.device))
                elif not _same(a, b):
                    raise ValueError(
                        f"{self.name}: fixed state '{name}' differs between the accumulators being merged; "
                        "they were set up from different calibration batches or seeds"
                    )
        for name, reservoir in self._reservoirs.items():
            reservoir.merge(other._reservoirs[name])
        return self

    def sync(self, all_reduce: AllReduce, all_gather_object: AllGatherObject) -> None:
        """Make every process hold the global state: all-reduce the sums, gather and merge the reservoirs."""
        self.flush()
        for name, reduction in self._reductions.items():
            if reduction == "sum":
                value = getattr(self, name)
                reduced = [all_reduce(t) for t in _as_list(value)]
                setattr(self, name, reduced if isinstance(value, list) else reduced[0])
        for reservoir in self._reservoirs.values():
            gathered = all_gather_object(reservoir.state_dict())
            merged = Reservoir(reservoir.capacity)
            for state in gathered:
                part = Reservoir(0)
                part.load_state_dict(state)
                merged.merge(part)
            reservoir.load_state_dict(merged.state_dict())

    # -- persistence (resume) ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "num_layers": self.num_layers,
            "states": {name: (reduction, getattr(self, name)) for name, reduction in self._reductions.items()},
            "reservoirs": {name: r.state_dict() for name, r in self._reservoirs.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_layers = state["num_layers"]
        for name, (reduction, value) in state["states"].items():
            self.add_state(name, value, reduction)
        for name, rstate in state["reservoirs"].items():
            self.add_reservoir(name, rstate["capacity"]).load_state_dict(rstate)
        self.load_extra_state(state["extra"])

    # -- calibration shared across processes --------------------------------------------------------------
    def fixed_states(self) -> dict[str, StateValue]:
        """The fixed states set by :meth:`setup` (projections, target scaling, shifts)."""
        return {name: getattr(self, name) for name, reduction in self._reductions.items() if reduction == "fixed"}

    def load_fixed_states(self, fixed: dict[str, StateValue]) -> None:
        """Adopt another accumulator's :meth:`fixed_states` (set up from the same model, so shapes agree), e.g.
        process 0's calibration on every process. Call it right after :meth:`setup`."""
        for name, value in fixed.items():
            if self._reductions.get(name) != "fixed":
                raise ValueError(f"{self.name}.{name} is not a fixed state of this accumulator")
            mine, theirs = getattr(self, name), _as_list(value)
            if [t.shape for t in _as_list(mine)] != [t.shape for t in theirs]:
                raise ValueError(f"{self.name}.{name} shapes differ")
            moved = [t.to(m.device) for m, t in zip(_as_list(mine), theirs)]
            setattr(self, name, moved if isinstance(mine, list) else moved[0])

    def extra_state(self) -> dict[str, Any]:
        """Plain-Python setup facts (shapes, class counts) a subclass needs to restore; override if any."""
        return {}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        pass

    # -- helpers -----------------------------------------------------------------------------------------
    def missing_column(self) -> np.ndarray:
        assert self.num_layers is not None
        return np.full(self.num_layers + 2, np.nan)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _as_list(value: StateValue) -> list[torch.Tensor]:
    return value if isinstance(value, list) else [value]


def float64_zeros(*shape: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float64, device=device)

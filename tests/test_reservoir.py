"""The bounded test-split sample: the smallest keys, whatever the batching, merging or resuming."""

import numpy as np
import pytest
import torch

from hf_isi.metrics.base import Reservoir


def _reference(keys: np.ndarray, capacity: int) -> np.ndarray:
    """Indices of the ``capacity`` smallest keys, ties in arrival order (numpy's stable sort)."""
    return np.argsort(keys, kind="stable")[:capacity]


@pytest.mark.parametrize("capacity", [1, 7, 50, 500])
def test_reservoir_keeps_smallest_keys_in_any_batching(capacity):
    rng = np.random.default_rng(capacity)
    keys = rng.integers(0, 40, size=300)  # many ties
    values = rng.normal(size=(300, 3))
    expected = _reference(keys, capacity)
    for sizes in ([300], [1] * 300, [17, 100, 3, 180]):
        r = Reservoir(capacity)
        start = 0
        for size in sizes:
            r.add(torch.as_tensor(keys[start:start + size]), x=torch.as_tensor(values[start:start + size]))
            start += size
        np.testing.assert_array_equal(r.keys.numpy(), keys[expected])
        np.testing.assert_array_equal(r.data["x"].numpy(), values[expected])
        slot_keys, slot_data = r.slots()
        assert sorted(slot_keys.tolist()) == sorted(keys[expected].tolist())
        assert len(r) == min(capacity, 300) == slot_data["x"].shape[0]


def test_reservoir_merge_and_state_dict_round_trip():
    rng = np.random.default_rng(0)
    keys = rng.permutation(1000)[:400]  # distinct keys: merge order cannot matter
    values = rng.normal(size=(400, 2))
    a, b = Reservoir(64), Reservoir(64)
    a.add(torch.as_tensor(keys[:150]), x=torch.as_tensor(values[:150]))
    b.add(torch.as_tensor(keys[150:]), x=torch.as_tensor(values[150:]))
    b.merge(a)
    restored = Reservoir(0)
    restored.load_state_dict(b.state_dict())
    expected = _reference(keys, 64)
    for r in (b, restored):
        np.testing.assert_array_equal(r.keys.numpy(), keys[expected])
        np.testing.assert_array_equal(r.data["x"].numpy(), values[expected])

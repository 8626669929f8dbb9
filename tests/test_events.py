import numpy as np
import pytest

import dv_processing as dv

from helpers import random_events
from stream.events import (
    EVENT_DTYPE,
    EventFormatError,
    SensorSize,
    check_events,
    from_aedat,
    from_dv,
    from_tonic,
    to_aedat,
    to_dv,
    to_tonic,
)


def test_dtype_matches_dv_processing_memory_layout():
    store = dv.EventStore()
    store.push_back(123, 4, 5, True)
    store.push_back(456, 6, 7, False)
    events = from_dv(store.numpy())
    assert events.dtype == EVENT_DTYPE and EVENT_DTYPE.itemsize == 16
    assert events["t"].tolist() == [123, 456] and events["x"].tolist() == [4, 6]
    assert events["y"].tolist() == [5, 7] and events["p"].tolist() == [1, 0]


def test_round_trips_are_exact():
    events = random_events(SensorSize(346, 260), 0, 10**7, count=1000)
    assert np.array_equal(from_dv(to_dv(events)), events)
    assert np.array_equal(from_tonic(to_tonic(events)), events)
    assert np.array_equal(from_aedat(to_aedat(events)), events)


def test_from_tonic_scales_milliseconds():
    tonic_ms = np.array([(1.5, 2, 3, True)], dtype=[("t", "<f8"), ("x", "<i2"), ("y", "<i2"), ("p", "?")])
    assert from_tonic(tonic_ms, time_scale_us=1000.0)["t"].tolist() == [1500]


def test_sensor_size_parse_and_validation():
    assert SensorSize.parse("346x260") == SensorSize(346, 260)
    assert str(SensorSize(128, 128)) == "128x128"
    for bad in ("128", "0x5", "axb", "40000x10"):
        with pytest.raises(ValueError):
            SensorSize.parse(bad)


def test_check_events_rejects_other_dtypes():
    with pytest.raises(EventFormatError):
        check_events(np.zeros(3))
    assert len(check_events(np.zeros(0, dtype=EVENT_DTYPE))) == 0


def test_concatenate_events_keeps_the_canonical_dtype():
    from stream.events import concatenate_events

    a, b = random_events(SensorSize(346, 260), count=5, seed=1), random_events(SensorSize(346, 260), count=7, seed=2)
    joined = concatenate_events([a, b])
    assert joined.dtype == EVENT_DTYPE and len(joined) == 12
    assert np.array_equal(joined[:5], a) and np.array_equal(joined[5:], b)
    assert len(concatenate_events([])) == 0

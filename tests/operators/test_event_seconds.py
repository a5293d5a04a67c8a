"""Event times in seconds: the fast path gives exactly what ``timestamp()`` gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from operators import Event
from operators._keying import _Epochs


class Tick(Event):
    pass


zones = st.one_of(
    st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda m: timezone(timedelta(minutes=m))
    ),
    st.sampled_from([ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York"), timezone.utc]),
)


@settings(max_examples=300)
@given(
    moments=st.lists(
        st.tuples(
            # naive wall-clock times, given a zone just below
            st.datetimes(
                min_value=datetime(1900, 1, 2),  # noqa: DTZ001
                max_value=datetime(2200, 1, 1),  # noqa: DTZ001
            ),
            zones,
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_same_seconds_as_timestamp_whatever_the_zones_and_their_order(
    moments: list[tuple[datetime, timezone | ZoneInfo]],
) -> None:
    epochs = _Epochs()
    for naive, zone in moments:
        value = naive.replace(tzinfo=zone)
        both = [value]
        offset = value.utcoffset()
        if offset is not None and not offset % timedelta(minutes=1):
            # pydantic's own zone (its text form holds no seconds of offset)
            both.append(Tick.model_validate({"time": value.isoformat()}).time)
        for v in both:
            assert epochs.seconds(v) == v.timestamp(), v.isoformat()

"""The one parser of the collector's query parameters (agent.collector.params), value by value: what each
parameter accepts, what it makes of it, and the one-line 400 that names it otherwise. The HTTP side (the
UI and the API selecting the same hosts for the same query) is in test_queries.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from starlette.datastructures import QueryParams

from agent.collector import params
from agent.collector.errors import BadRequestError
from agent.collector.queries import HostFilter, Page
from tests.factory import BASE_TIME

NOW = BASE_TIME
PARSERS = {"page": params.page, "hosts": lambda q: params.host_filter(q, NOW), "runs": params.run_statuses,
           "drift": params.drift_filters, "group": params.drift_group, "rollout": params.rollout_hosts,
           "delivery": params.delivery_status}


def parse(part: str, query: str) -> object:
    """One parser (the API's defaults) over one query string."""
    return PARSERS[part](QueryParams(query))



GOOD = [
    ("", "page", Page(100, 0)),
    ("limit=&offset=", "page", Page(100, 0)),  # empty = absent (forms send empty fields)
    ("limit=1&offset=0", "page", Page(1, 0)),
    ("limit=1000&offset=1000000000", "page", Page(1000, 10**9)),
    ("", "hosts", HostFilter()),
    ("stale=true", "hosts", HostFilter(stale=True)),
    ("stale=TRUE", "hosts", HostFilter(stale=True)),
    ("stale=1", "hosts", HostFilter(stale=True)),
    ("stale=yes", "hosts", HostFilter(stale=True)),
    ("stale=false", "hosts", HostFilter(stale=False)),
    ("stale=0", "hosts", HostFilter(stale=False)),
    ("stale=No", "hosts", HostFilter(stale=False)),
    ("stale=", "hosts", HostFilter()),
    ("status=stale", "hosts", HostFilter(stale=True)),
    ("status=stale&stale=true", "hosts", HostFilter(stale=True)),
    ("status=stale&stale=false", "hosts", HostFilter(stale=True, contradiction=True)),
    ("status=drifted,failed&status=paused", "hosts", HostFilter(status=("drifted", "failed", "paused"))),
    ("status=drifted,stale", "hosts", HostFilter(status=("drifted",), stale=True)),
    ("status=,", "hosts", HostFilter()),
    ("role=web&commit=abc&q=web0", "hosts", HostFilter(role="web", commit="abc", search="web0")),
    ("role=&commit=&q=&seen=&sort=&order=", "hosts", HostFilter()),
    ("sort=drift&order=desc", "hosts", HostFilter(sort="drift", descending=True)),
    ("sort=last_seen&order=asc", "hosts", HostFilter(sort="last_seen")),
    ("seen=1h", "hosts", HostFilter(seen_after=NOW - timedelta(hours=1))),
    ("seen=-7d", "hosts", HostFilter(seen_before=NOW - timedelta(days=7))),
    ("status=in_sync,error", "runs", ("in_sync", "error")),
    ("", "runs", ()),
    ("", "drift", {"task": None, "kind": None, "role": None, "host": None, "state": None}),
    ("task=nginx+config&kind=recurring&role=&host=web01&state=accepted", "drift",
     {"task": "nginx config", "kind": "recurring", "role": None, "host": "web01", "state": "accepted"}),
    ("", "group", "task"),
    ("group=host", "group", "host"),
    ("", "rollout", "running"),
    ("hosts=not_reached", "rollout", "not_reached"),
    ("status=failed", "delivery", "failed"),
    ("status=", "delivery", None),
]


@pytest.mark.parametrize(("query", "part", "expected"), GOOD)
def test_good_values(query, part, expected):
    assert parse(part, query) == expected


def test_the_ui_page_size_is_only_a_default():
    assert params.page(QueryParams(""), params.UI_PAGE_SIZE) == Page(50, 0)
    assert params.page(QueryParams("limit=7"), params.UI_PAGE_SIZE) == Page(7, 0)
    with pytest.raises(BadRequestError, match=r"^limit: expected a whole number from 1 to 1000$"):
        params.page(QueryParams("limit=0"), params.UI_PAGE_SIZE)


BAD = [
    ("limit=0", "page", "limit: expected a whole number from 1 to 1000"),
    ("limit=1001", "page", "limit: expected a whole number from 1 to 1000"),
    ("limit=abc", "page", "limit: expected a whole number from 1 to 1000"),
    ("limit=\u00b2", "page", "limit: expected a whole number from 1 to 1000"),
    ("limit=\u0663", "page", "limit: expected a whole number from 1 to 1000"),
    ("limit=" + "9" * 5000, "page", "limit: expected a whole number from 1 to 1000"),
    ("limit=+1", "page", "limit: expected a whole number from 1 to 1000"),
    ("offset=-1", "page", "offset: expected a whole number from 0 to 1000000000"),
    ("offset=1000000001", "page", "offset: expected a whole number from 0 to 1000000000"),
    ("offset=1e3", "page", "offset: expected a whole number from 0 to 1000000000"),
    ("stale=maybe", "hosts", "stale: expected true or false"),
    ("stale=t", "hosts", "stale: expected true or false"),
    ("status=bogus", "hosts", "status: 'bogus' is not one of in_sync, drifted, corrected, failed, error, "
                              "paused, stale"),
    ("status=drifted,Failed", "hosts", "status: 'Failed' is not one of in_sync, drifted, corrected, failed, "
                                       "error, paused, stale"),
    ("sort=color", "hosts", "sort: expected one of host, last_seen, status, drift, commit"),
    ("order=up", "hosts", "order: expected asc or desc"),
    ("seen=2y", "hosts", "seen: expected one of 1h, 24h, 7d, or - before one"),
    ("status=stale", "runs", "status: 'stale' is not one of in_sync, drifted, corrected, failed, error, paused"),
    ("kind=sideways", "drift", "kind: expected one of corrective, intentional, recurring, unverifiable"),
    ("group=role", "group", "group: expected task or host"),
    ("hosts=all", "rollout", "hosts: expected running or not_reached"),
    ("status=sent", "delivery", "status: expected one of pending, sending, delivered, failed"),
    # a NUL: no stored value has one, and PostgreSQL refuses it in any text (a 422 from the database)
    ("q=web%00", "hosts", "q: must not contain a NUL character"),
    ("role=%00", "hosts", "role: must not contain a NUL character"),
    ("commit=ab%00", "hosts", "commit: must not contain a NUL character"),
    ("task=x%00y", "drift", "task: must not contain a NUL character"),
]


@pytest.mark.parametrize(("query", "part", "message"), BAD)
def test_bad_values_are_one_line_400s_naming_the_parameter(query, part, message):
    with pytest.raises(BadRequestError) as caught:
        parse(part, query)
    assert caught.value.status == 400
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_a_long_bad_value_is_cut_in_the_message():
    with pytest.raises(BadRequestError) as caught:
        params.run_statuses(QueryParams("status=" + "x" * 5000))
    assert len(str(caught.value)) < 200

"""The suite's xdist groups are real: a module marked ``xdist_group`` runs on one worker, so its
module-scoped network comes up once, not once per worker.

pytest-xdist's ``--dist loadgroup`` tags a grouped test by rewriting its node id to end in
``@group``; pytest 9 stopped reading the attribute it rewrites, and every group was silently
ignored (two bridge networks on a 2-core machine at once). This fails if that comes back.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group(name="xdist-self-check")


def test_a_grouped_test_carries_its_group_under_loadgroup(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):  # set on a worker of --dist loadgroup
        pytest.skip("checked on the workers of `make test` (--dist loadgroup) only")
    assert request.node.nodeid.endswith("@xdist-self-check"), request.node.nodeid

"""The one POINT resolver: full ids, unique prefixes, `latest`, VM@latest; ambiguity is
refused with the candidates listed, never guessed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from protector.pointref import PointRefError, needs_manifests, resolve_point
from repository import Manifest, VmIdentity

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def point(vm: VmIdentity, seq: int) -> Manifest:
    at = T0 + timedelta(hours=seq)
    pid = f"{vm.key}-{at:%Y%m%dT%H%M%SZ}-{seq:06d}"
    return Manifest(pid, vm, seq, None, None, 1 << 20, at, at, at, ())


WEB = VmIdentity("vc", "uuid-web", "web-1", "/DC0/vm/web-1", "vm-1")
WEB_TWIN = VmIdentity("vc", "uuid-web2", "web-1", "/DC0/vm/other/web-1", "vm-9")
DB = VmIdentity("vc", "uuid-db", "db-1", "/DC0/vm/db-1", "vm-2")
POINTS = [point(WEB, 1), point(WEB, 2), point(DB, 1), point(WEB_TWIN, 1)]
IDS = sorted(m.point_id for m in POINTS)


def test_a_full_id_and_a_unique_prefix_name_their_point():
    full = POINTS[1].point_id
    assert resolve_point(full, IDS) == full
    assert resolve_point(full[:-3], IDS) == full  # ...-0000 is unique to seq 2
    assert resolve_point(DB.key[:6], IDS) == POINTS[2].point_id  # only point of db-1


def test_an_ambiguous_prefix_is_refused_listing_the_candidates():
    with pytest.raises(PointRefError) as exc:
        resolve_point(WEB.key, IDS)
    msg = str(exc.value)
    assert "matches 2 points" in msg
    assert POINTS[0].point_id in msg and POINTS[1].point_id in msg
    assert exc.value.exit_code == 2


def test_an_unknown_id_suggests_the_nearest():
    typo = POINTS[2].point_id[:-1] + "9"
    with pytest.raises(PointRefError, match="did you mean " + POINTS[2].point_id):
        resolve_point(typo, IDS)


def test_latest_of_a_vm_by_name_path_moref_or_uuid():
    assert needs_manifests("latest") and needs_manifests("db-1@latest")
    assert not needs_manifests(POINTS[0].point_id)
    for spec in ("/DC0/vm/web-1@latest", "vm-1@latest", "UUID-WEB@latest"):
        assert resolve_point(spec, IDS, POINTS) == POINTS[1].point_id
    assert resolve_point("db-1@latest", IDS, POINTS) == POINTS[2].point_id


def test_latest_is_refused_when_it_could_mean_several_vms():
    with pytest.raises(PointRefError) as exc:
        resolve_point("web-1@latest", IDS, POINTS)  # two VMs are called web-1
    msg = str(exc.value)
    assert "2 VMs" in msg and "/DC0/vm/web-1" in msg and "/DC0/vm/other/web-1" in msg
    with pytest.raises(PointRefError, match="3 VMs"):
        resolve_point("latest", IDS, POINTS)
    assert resolve_point("latest", IDS[:1], [POINTS[2]]) == POINTS[2].point_id  # one VM
    with pytest.raises(PointRefError, match="did you mean db-1"):
        resolve_point("db-2@latest", IDS, POINTS)

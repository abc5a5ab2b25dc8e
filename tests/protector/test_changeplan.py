from protector.backup.changeplan import ReadMode, after_query_fault, plan_read, tracking_uuid


def test_first_backup_reads_allocated_areas_via_star():
    p = plan_read(None, "52 aa/1", force_full=False)
    assert (p.mode, p.query_change_id) == (ReadMode.ALLOCATED_CBT, "*")
    assert not p.incremental


def test_same_tracking_uuid_is_incremental_from_the_saved_change_id():
    p = plan_read("52 aa/3", "52 aa/7", force_full=False)
    assert p.incremental and p.query_change_id == "52 aa/3"


def test_changed_uuid_part_forces_full_read():
    p = plan_read("52 aa/3", "52 bb/1", force_full=False)
    assert p.mode is ReadMode.ALLOCATED_CBT
    assert "reset" in p.reason


def test_empty_change_id_means_no_cbt_full_read_without_query():
    p = plan_read("52 aa/3", "", force_full=False)
    assert p.mode is ReadMode.ALLOCATED and p.query_change_id is None


def test_explicit_full_and_fault_downgrade():
    assert plan_read("u/1", "u/2", force_full=True).mode is ReadMode.ALLOCATED_CBT
    inc = plan_read("u/1", "u/2", force_full=False)
    down = after_query_fault(inc, "FileFault")
    assert down.mode is ReadMode.ALLOCATED_CBT and "FileFault" in down.reason
    assert after_query_fault(down, "FileFault").mode is ReadMode.ALLOCATED


def test_tracking_uuid():
    assert tracking_uuid("52 de ad/0001") == "52 de ad"
    assert tracking_uuid("*") == ""

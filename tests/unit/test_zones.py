"""middlebox.zones.ZoneMap: which conntrack zone each local VM and SNAT rule
gets, what is released, when a released zone comes back, and what a
restarted daemon finds again."""


from middlebox.zones import FIRST_ZONE, LAST_ZONE, REUSE_AFTER, ZoneMap

A, B, C = ("vm", "a1"), ("vm", "b1"), ("vm", "c1")
SNAT = ("snat", "0c0ffee0-0000-4000-8000-00000000000a")


def test_each_owner_gets_its_own_zone_in_range_and_keeps_it():
    zones = ZoneMap()
    new, released = zones.update([A, B, SNAT])
    assert released == {} and set(new) == {A, B, SNAT}
    assert len(set(new.values())) == 3
    assert all(FIRST_ZONE <= z <= LAST_ZONE for z in new.values())
    assert zones.vm("a1") == new[A] and zones.get(SNAT) == new[SNAT]
    assert zones.owners() == new
    # The same owners again: nothing changes, nobody is flushed.
    assert zones.update([SNAT, A, B]) == ({}, {})
    assert zones.owners() == new


def test_an_owner_no_longer_wanted_is_released_and_others_keep_their_zone():
    zones = ZoneMap()
    first, _ = zones.update([A, B])
    new, released = zones.update([A])
    assert new == {} and released == {B: first[B]}
    assert zones.vm("b1") is None and zones.vm("a1") == first[A]


def test_a_released_zone_is_reused_last():
    zones = ZoneMap()
    first, _ = zones.update([A])
    zones.update([])
    # Released in this update or an earlier one: fresh zones come first, so
    # a VM never sees a zone another owner just had.
    new, released = zones.update([B])
    assert released == {} and new[B] != first[A]
    seen = {new[B]}
    for i in range(REUSE_AFTER):
        got, _ = zones.update([("vm", "x%d" % i)])
        seen.update(got.values())
    assert first[A] not in seen


def test_a_zone_released_in_the_same_update_is_not_handed_to_a_newcomer():
    zones = ZoneMap(first=1, last=3)
    zones.update([A, B])
    new, released = zones.update([A, C])
    assert released == {B: 2} and new == {C: 3}


def test_when_every_zone_is_taken_the_oldest_released_comes_back():
    zones = ZoneMap(first=1, last=3)
    zones.update([A, B, C])
    zones.update([A, C])                    # b1's zone 2 released
    new, _ = zones.update([A, C, SNAT])
    assert new == {SNAT: 2}


def test_owners_beyond_the_range_get_no_zone_and_the_others_are_kept():
    zones = ZoneMap(first=1, last=2)
    new, _ = zones.update([A, B, C])
    assert len(new) == 2 and set(new.values()) == {1, 2}
    assert sum(zones.get(o) is None for o in (A, B, C)) == 1


def test_recover_adopts_the_zones_found_in_the_flows():
    zones = ZoneMap()
    zones.recover({A: 70, SNAT: 900})
    assert zones.vm("a1") == 70 and zones.get(SNAT) == 900
    # Kept as they are by the first plan, and a newcomer gets another zone.
    new, released = zones.update([A, SNAT, B])
    assert released == {} and list(new) == [B] and new[B] not in (70, 900)


def test_recover_ignores_zones_out_of_range_and_a_zone_claimed_twice():
    zones = ZoneMap(first=1, last=100)
    zones.recover({A: 0, B: 101, C: 5, SNAT: 5})
    assert zones.vm("a1") is None and zones.vm("b1") is None
    assert [o for o, z in zones.owners().items() if z == 5] == [C]


def test_a_zone_allocated_after_recover_stays_in_range():
    zones = ZoneMap(first=10, last=20)
    zones.recover({A: 20})
    new, _ = zones.update([A, B])
    assert 10 <= new[B] <= 20

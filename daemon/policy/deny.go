package policy

// actionRank orders actions for entries that land on the same key: an
// explicit deny beats everything, a redirect beats a plain allow (the proxy
// must see traffic that some rule wants inspected).
func actionRank(a Action) int {
	switch a {
	case ActionDeny:
		return 3
	case ActionRedirectDNS, ActionRedirectL7:
		return 2
	}
	return 1
}

// mergeEntry decides between two entries for one key. Between equals the
// lowest cookie wins, so the rule a verdict names does not depend on the
// order policies were read in.
func mergeEntry(old, new Entry) Entry {
	ro, rn := actionRank(old.Action), actionRank(new.Action)
	switch {
	case rn > ro:
		return new
	case rn < ro:
		return old
	case new.Cookie < old.Cookie:
		return new
	}
	return old
}

// putEntry adds e at k, merging with an entry already there.
func putEntry(entries map[Key]Entry, k Key, e Entry) {
	if old, ok := entries[k]; ok {
		e = mergeEntry(old, e)
	}
	entries[k] = e
}

// keyGroup is a key without its port prefix: the datapath does one longest
// prefix match per group.
type keyGroup struct {
	local, remote uint32
	dir           Direction
	proto         uint8
}

func groupOf(k Key) keyGroup {
	return keyGroup{local: k.Local, remote: k.Remote, dir: k.Dir, proto: k.Proto}
}

// nestDenies turns every non-deny entry whose port prefix lies inside a
// deny prefix of the same (local, remote, direction, protocol) into that
// deny. The datapath's longest prefix match returns only the most specific
// prefix of a group, so without this an allow for port 80 would hide a deny
// for ports 0-1023 of the same group. Overlaps across groups (a deny for any
// protocol or any remote) need no rewrite: Lookup consults every group and
// lets a deny win. Where several denies cover an entry the lowest cookie
// names the verdict.
func nestDenies(entries map[Key]Entry) {
	denies := map[keyGroup][]Key{}
	for k, e := range entries {
		if e.Action == ActionDeny {
			g := groupOf(k)
			denies[g] = append(denies[g], k)
		}
	}
	if len(denies) == 0 {
		return
	}
	for k, e := range entries {
		if e.Action == ActionDeny {
			continue
		}
		var (
			deny  Entry
			found bool
		)
		for _, d := range denies[groupOf(k)] {
			if d.PortPrefixLen > k.PortPrefixLen || !portInPrefix(d.Port, d.PortPrefixLen, k.Port) {
				continue
			}
			if de := entries[d]; !found || de.Cookie < deny.Cookie {
				deny, found = de, true
			}
		}
		if found {
			// Assigning to an existing key while ranging is well defined.
			entries[k] = deny
		}
	}
}

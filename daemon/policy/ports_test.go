package policy

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestPortPrefixesExamples(t *testing.T) {
	for _, tc := range []struct {
		first, last uint16
		want        []PortPrefix
	}{
		{0, 65535, []PortPrefix{{0, 0}}},
		{80, 80, []PortPrefix{{80, 16}}},
		{65535, 65535, []PortPrefix{{65535, 16}}},
		{0, 0, []PortPrefix{{0, 16}}},
		{1024, 2047, []PortPrefix{{1024, 6}}},
		{32000, 32768, []PortPrefix{{32000, 8}, {32256, 7}, {32768, 16}}},
		{1, 65535, []PortPrefix{
			{1, 16}, {2, 15}, {4, 14}, {8, 13}, {16, 12}, {32, 11}, {64, 10}, {128, 9},
			{256, 8}, {512, 7}, {1024, 6}, {2048, 5}, {4096, 4}, {8192, 3}, {16384, 2}, {32768, 1},
		}},
		{81, 80, nil},
	} {
		if got := PortPrefixes(tc.first, tc.last); !slices.Equal(got, tc.want) {
			t.Errorf("PortPrefixes(%d, %d) = %v, want %v", tc.first, tc.last, got, tc.want)
		}
	}
}

// TestPortPrefixesCover checks for many random ranges that the prefixes are
// aligned, in order, and tile exactly [first, last], and that no more are
// used than the range needs.
func TestPortPrefixesCover(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		a, b := uint16(rng.UintN(65536)), uint16(rng.UintN(65536))
		// Small ranges and ranges near the ends are where mistakes hide.
		switch i % 4 {
		case 1:
			b = a + uint16(rng.UintN(64))
		case 2:
			a = 0
		case 3:
			b = 65535
		}
		if a > b {
			a, b = b, a
		}
		checkCover(t, a, b, PortPrefixes(a, b))
	}
}

func checkCover(t *testing.T, first, last uint16, pps []PortPrefix) {
	t.Helper()
	if len(pps) == 0 || len(pps) > 30 {
		t.Fatalf("PortPrefixes(%d, %d): %d prefixes", first, last, len(pps))
	}
	next := uint32(first)
	for _, pp := range pps {
		if pp.PrefixLen > 16 || pp.Port&^portMask(pp.PrefixLen) != 0 {
			t.Fatalf("PortPrefixes(%d, %d): unaligned prefix %v", first, last, pp)
		}
		if uint32(pp.Port) != next {
			t.Fatalf("PortPrefixes(%d, %d): prefix %v starts at %d, want %d", first, last, pp, pp.Port, next)
		}
		next += uint32(1) << (16 - pp.PrefixLen)
	}
	if next != uint32(last)+1 {
		t.Fatalf("PortPrefixes(%d, %d): prefixes end at %d", first, last, next-1)
	}
	// Minimal: two neighbours that would merge into one aligned prefix
	// mean the split was not the coarsest.
	for i := 1; i < len(pps); i++ {
		p, q := pps[i-1], pps[i]
		if p.PrefixLen == q.PrefixLen && p.PrefixLen > 0 && p.Port&^portMask(p.PrefixLen-1) == 0 {
			t.Fatalf("PortPrefixes(%d, %d): %v and %v should be one prefix", first, last, p, q)
		}
	}
}

// TestPortPrefixesMembership checks every port against a few ranges with
// the same test the datapath's trie applies.
func TestPortPrefixesMembership(t *testing.T) {
	for _, r := range [][2]uint16{{0, 65535}, {1, 1023}, {999, 1025}, {32000, 32768}, {65000, 65535}, {443, 443}} {
		pps := PortPrefixes(r[0], r[1])
		for p := 0; p <= 65535; p++ {
			in := slices.ContainsFunc(pps, func(pp PortPrefix) bool { return portInPrefix(pp.Port, pp.PrefixLen, uint16(p)) })
			if want := uint16(p) >= r[0] && uint16(p) <= r[1]; in != want {
				t.Fatalf("range %v: port %d covered = %v, want %v", r, p, in, want)
			}
		}
	}
}

package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/aegis-cni/aegis/daemon/api"
)

// cmdFQDNList lists what the DNS proxy learned: name, address, the
// identity it was learned for and the pod that asked, TTL left, the
// toFQDNs selectors the name matched.
func cmdFQDNList(ctx context.Context, c *api.Client, argv []string) error {
	out, err := outputFlags("fqdn cache list", argv, nil)
	if err != nil {
		return err
	}
	l, err := c.FQDNCache(ctx)
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(l)
	}
	var rows [][]string
	for _, e := range l {
		left := time.Until(e.Expires).Round(time.Second)
		ttl := left.String()
		if left <= 0 {
			ttl = "expired (live connection)"
		}
		rows = append(rows, []string{e.Name, e.IP, ttl, fmt.Sprint(e.Identity), e.Source, strings.Join(dedup(e.Selectors), ","), strings.Join(e.Ports, ",")})
	}
	table("NAME\tIP\tTTL LEFT\tIDENTITY\tSOURCE\tSELECTORS\tPORTS", rows)
	return nil
}

// cmdFQDNClean forgets learned addresses, and the access they gave.
func cmdFQDNClean(ctx context.Context, c *api.Client, argv []string) error {
	var identity uint
	out, err := outputFlags("fqdn cache clean", argv, func(fs *flag.FlagSet) {
		fs.UintVar(&identity, "identity", 0, "only what was learned for this local identity")
	})
	if err != nil {
		return err
	}
	n, err := c.CleanFQDNCache(ctx, uint32(identity))
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(api.FQDNClean{Removed: n})
	}
	fmt.Printf("removed %d learned addresses\n", n)
	return nil
}

func dedup(s []string) []string {
	var out []string
	for _, v := range s {
		if len(out) == 0 || out[len(out)-1] != v {
			out = append(out, v)
		}
	}
	return out
}

// Package dashboards holds the Grafana dashboards (Clusters, Drops, DNS,
// Pod Flows) for Aegis's metrics; the test keeps them loadable and
// pointing at metrics that exist.
package dashboards

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// Metric families aegisd exports, plus the DNS ones the DNS proxy adds
// (issue 4).
var known = map[string]bool{
	"hubble_flows_processed_total": true, "hubble_drop_total": true, "hubble_tcp_flags_total": true,
	"hubble_policy_verdicts_total": true, "hubble_lost_events_total": true,
	"aegis_forward_count_total": true, "aegis_forward_bytes_total": true, "aegis_drop_count_total": true, "aegis_drop_bytes_total": true,
	"hubble_dns_queries_total": true, "hubble_dns_responses_total": true,
}

var metricRef = regexp.MustCompile(`\b(hubble|aegis)_[a-z_]+\b`)

func TestDashboards(t *testing.T) {
	files, _ := filepath.Glob("*.json")
	if len(files) != 4 {
		t.Fatalf("want the 4 dashboards, found %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			UID    string `json:"uid"`
			Title  string `json:"title"`
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
			t.Errorf("%s: uid, title and panels are required", f)
		}
		for _, p := range d.Panels {
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", f, p.Title)
			}
			for _, tg := range p.Targets {
				refs := metricRef.FindAllString(tg.Expr, -1)
				if len(refs) == 0 {
					t.Errorf("%s: panel %q queries no Aegis metric: %s", f, p.Title, tg.Expr)
				}
				for _, m := range refs {
					if !known[m] {
						t.Errorf("%s: panel %q uses unknown metric %s", f, p.Title, m)
					}
				}
			}
		}
	}
}

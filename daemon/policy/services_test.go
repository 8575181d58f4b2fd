package policy

import "testing"

func TestAddServices(t *testing.T) {
	const client, web, db, svcWeb, svcMixed = 300, 301, 302, 1 << 23, 1<<23 + 1
	res := &Result{Identities: map[uint32]*IdentityPolicy{
		client: {EgressEnforced: true, Entries: map[Key]Entry{
			{Local: client, Remote: web, Dir: Egress, Proto: ProtoTCP, Port: 8080, PortPrefixLen: 16}: {Action: ActionAllow, Cookie: 7},
		}},
		web: {IngressEnforced: true, Entries: map[Key]Entry{}},
	}}
	res.AddServices([]Service{
		{Identity: svcWeb, Ports: []ServicePort{{Proto: ProtoTCP, Port: 80, Backends: []ServiceBackend{{web, 8080}, {web, 8080}}}}},
		{Identity: svcMixed, Ports: []ServicePort{
			{Proto: ProtoTCP, Port: 80, Backends: []ServiceBackend{{web, 8080}, {db, 8080}}},
			{Proto: ProtoTCP, Port: 81, Backends: nil},
		}},
	})
	if e, _ := res.Lookup(client, svcWeb, Egress, ProtoTCP, 80); e.Action != ActionAllow || e.Cookie != 7 {
		t.Errorf("service whose backends are all allowed: %+v", e)
	}
	if e, _ := res.Lookup(client, svcWeb, Egress, ProtoTCP, 8080); e.Action != ActionDeny {
		t.Errorf("the service's target port is not its port: %+v", e)
	}
	if e, _ := res.Lookup(client, svcMixed, Egress, ProtoTCP, 80); e.Action != ActionDeny {
		t.Errorf("service with a denied backend: %+v", e)
	}
	if e, _ := res.Lookup(client, svcMixed, Egress, ProtoTCP, 81); e.Action != ActionDeny {
		t.Errorf("service port without backends: %+v", e)
	}
	if len(res.Identities[web].Entries) != 0 {
		t.Errorf("an identity without egress policy got entries: %v", res.Identities[web].Entries)
	}
}

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// The store is host-local's disk backend: under dataDir/<network>, one
// file per reserved address, named by the address and holding
// "containerID\r\nifname", created with O_EXCL and guarded by a flock on
// the directory's "lock" file. A reservation is made or not; a crash
// leaves at worst an orphan file, which DEL or GC releases.

// rangeID names our single range in the store's last_reserved_ip file,
// which the allocator's iterator reads to go round-robin.
const rangeID = 0

// errExhausted maps to CNI code 11: the range frees up as pods go away.
var errExhausted = errors.New("pod CIDR exhausted")

func openStore(c *config) (*disk.Store, error) {
	s, err := disk.New(c.name, c.dataDir)
	if err != nil {
		return nil, fmt.Errorf("open allocation store in %s: %w", c.dataDir, err)
	}
	return s, nil
}

// allocate returns the address reserved for (id, ifname), reserving one if
// there is none. The lookup and the reservation happen under one lock, so
// a runtime retrying an ADD that is still running cannot get a second
// address; the allocator's own Get would lock twice and refuse the repeat.
func allocate(s *disk.Store, c *config, id, ifname string) (*current.IPConfig, error) {
	if err := s.Lock(); err != nil {
		return nil, fmt.Errorf("lock allocation store: %w", err)
	}
	defer s.Unlock()
	if ip := reserved(s, c, id, ifname); ip != nil {
		return &current.IPConfig{Address: net.IPNet{IP: ip, Mask: c.rng.Subnet.Mask}, Gateway: c.rng.Gateway}, nil
	}
	rs := allocator.RangeSet{c.rng}
	iter, err := allocator.NewIPAllocator(&rs, s, rangeID).GetIter()
	if err != nil {
		return nil, fmt.Errorf("allocate address: %w", err)
	}
	for {
		ipn, gw := iter.Next()
		if ipn == nil {
			return nil, fmt.Errorf("allocate address: %w: every address of %s in %s is reserved",
				errExhausted, c.rng.String(), (*net.IPNet)(&c.rng.Subnet))
		}
		ok, err := s.Reserve(id, ifname, ipn.IP, strconv.Itoa(rangeID))
		if err != nil {
			return nil, fmt.Errorf("reserve %s: %w", ipn.IP, err)
		}
		if ok {
			return &current.IPConfig{Address: *ipn, Gateway: gw}, nil
		}
	}
}

// reserved is the address (id, ifname) holds in the configured range, or
// nil. The caller holds the lock.
func reserved(s *disk.Store, c *config, id, ifname string) net.IP {
	for _, ip := range s.GetByID(id, ifname) {
		if c.rng.Contains(ip) {
			return ip
		}
	}
	return nil
}

// lookup is reserved under the lock, for CHECK.
func lookup(s *disk.Store, c *config, id, ifname string) (net.IP, error) {
	if err := s.Lock(); err != nil {
		return nil, fmt.Errorf("lock allocation store: %w", err)
	}
	defer s.Unlock()
	return reserved(s, c, id, ifname), nil
}

// release frees whatever (id, ifname) holds, in or out of the current
// range; nothing held is not an error.
func release(s *disk.Store, id, ifname string) error {
	if err := s.Lock(); err != nil {
		return fmt.Errorf("lock allocation store: %w", err)
	}
	defer s.Unlock()
	if err := s.ReleaseByID(id, ifname); err != nil {
		return fmt.Errorf("release %s/%s: %w", id, ifname, err)
	}
	return nil
}

// collect releases every reservation whose attachment is not in valid.
// The disk store cannot list its reservations, so collect reads its
// files itself, skipping anything not named like an address (the lock,
// last_reserved_ip.*).
func collect(s *disk.Store, c *config) error {
	validIDs := map[string]bool{}
	valid := map[[2]string]bool{}
	for _, a := range c.valid {
		validIDs[a.ContainerID] = true
		valid[[2]string{a.ContainerID, a.IfName}] = true
	}
	if err := s.Lock(); err != nil {
		return fmt.Errorf("lock allocation store: %w", err)
	}
	defer s.Unlock()
	dir := filepath.Join(c.dataDir, c.name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list reservations in %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || net.ParseIP(e.Name()) == nil {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("read reservation: %w", err))
			continue
		}
		id, ifname, withIf := strings.Cut(strings.TrimSpace(string(data)), disk.LineBreak)
		// Files without an ifname predate it in host-local's format; they
		// belong to the container whatever its interface.
		if valid[[2]string{id, ifname}] || (!withIf && validIDs[id]) {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("release %s: %w", e.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// probe writes and removes a file where reservations go: STATUS's test
// that an ADD could reserve an address at all.
func probe(c *config) error {
	dir := filepath.Join(c.dataDir, c.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".status-")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	_, err = f.WriteString("status")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil && !errors.Is(rerr, os.ErrNotExist) {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	return nil
}

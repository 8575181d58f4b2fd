package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

func openStore(c *config) (*disk.Store, error) {
	s, err := disk.New(c.netName, c.ipam.DataDir)
	if err != nil {
		return nil, fmt.Errorf("open allocation store in %s: %w", c.ipam.DataDir, err)
	}
	return s, nil
}

// existing returns the address already reserved for (id, ifname), so a
// repeated ADD answers the same address instead of failing or taking a
// second one.
func existing(s *disk.Store, c *config, id, ifname string) (*current.IPConfig, error) {
	if err := s.Lock(); err != nil {
		return nil, fmt.Errorf("lock allocation store: %w", err)
	}
	defer s.Unlock()
	for _, ip := range s.GetByID(id, ifname) {
		r, err := c.rangeSet.RangeFor(ip)
		if err != nil {
			continue
		}
		return &current.IPConfig{Address: *ipNet(ip, r), Gateway: r.Gateway}, nil
	}
	return nil, nil
}

// allocate returns the address of (id, ifname): the one it already has,
// or a new one.
func allocate(s *disk.Store, c *config, id, ifname string) (*current.IPConfig, error) {
	ipc, err := existing(s, c, id, ifname)
	if err != nil || ipc != nil {
		return ipc, err
	}
	ipc, err = allocator.NewIPAllocator(&c.rangeSet, s, 0).Get(id, ifname, nil)
	if err != nil {
		if strings.Contains(err.Error(), "no IP addresses available") {
			return nil, types.NewError(types.ErrTryAgainLater, "pod CIDR exhausted", err.Error())
		}
		return nil, fmt.Errorf("allocate address: %w", err)
	}
	return ipc, nil
}

// withStore parses the configuration and opens the allocation store for
// one command.
func withStore(args *skel.CmdArgs, fn func(*config, *disk.Store) error) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	s, err := openStore(c)
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(c, s)
}

func cmdAdd(args *skel.CmdArgs) error {
	return withStore(args, func(c *config, s *disk.Store) error {
		ipc, err := allocate(s, c, args.ContainerID, args.IfName)
		if err != nil {
			return err
		}
		res := &current.Result{CNIVersion: current.ImplementedSpecVersion, IPs: []*current.IPConfig{ipc}, Routes: c.ipam.Routes}
		return types.PrintResult(res, c.cniVersion)
	})
}

func cmdDel(args *skel.CmdArgs) error {
	return withStore(args, func(c *config, s *disk.Store) error {
		if err := allocator.NewIPAllocator(&c.rangeSet, s, 0).Release(args.ContainerID, args.IfName); err != nil {
			return fmt.Errorf("release address: %w", err)
		}
		return nil
	})
}

func cmdCheck(args *skel.CmdArgs) error {
	return withStore(args, func(c *config, s *disk.Store) error {
		ipc, err := existing(s, c, args.ContainerID, args.IfName)
		if err != nil {
			return err
		}
		if ipc == nil {
			return fmt.Errorf("check: no address reserved for %s/%s", args.ContainerID, args.IfName)
		}
		return nil
	})
}

// cmdStatus fails with "plugin not available" when ADD could not work:
// the data directory is not writable.
func cmdStatus(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	dir := filepath.Join(c.ipam.DataDir, c.netName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "data directory not usable", err.Error())
	}
	f, err := os.CreateTemp(dir, ".status-")
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "data directory not writable", err.Error())
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// cmdGC releases every reservation whose attachment the runtime no longer
// lists as valid.
func cmdGC(args *skel.CmdArgs) error {
	return withStore(args, func(c *config, s *disk.Store) error {
		return gc(c, s)
	})
}

func gc(c *config, s *disk.Store) error {
	valid := map[string]bool{}
	for _, a := range c.valid {
		valid[a.ContainerID+"\n"+a.IfName] = true
	}
	if err := s.Lock(); err != nil {
		return fmt.Errorf("lock allocation store: %w", err)
	}
	defer s.Unlock()
	dir := filepath.Join(c.ipam.DataDir, c.netName)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("gc: list reservations: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), "last_reserved_ip") || strings.HasPrefix(e.Name(), ".") || e.Name() == "lock" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		id, ifname, _ := strings.Cut(strings.TrimSpace(string(data)), disk.LineBreak)
		id, ifname = strings.TrimSpace(id), strings.TrimSpace(ifname)
		if valid[id+"\n"+ifname] {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

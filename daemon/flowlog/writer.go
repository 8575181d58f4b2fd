package flowlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// DefaultPath is where ACNS writes flow logs on a node.
const DefaultPath = "/var/log/acns/hubble/events.log"

// rotatingFile appends lines to a file and rotates it by size, keeping a
// number of backups (events.log.1 is the newest). A write that fails (disk
// full, directory gone) drops the line, counts it, and is retried on the
// next line, so writing resumes when space returns.
type rotatingFile struct {
	mu      sync.Mutex
	path    string
	maxSize int64
	backups int
	f       *os.File
	size    int64
	written uint64
	lost    uint64
	lastErr error
}

func newRotatingFile(path string, maxSize int64, backups int) *rotatingFile {
	return &rotatingFile{path: path, maxSize: maxSize, backups: backups}
}

func (r *rotatingFile) open() error {
	if err := os.MkdirAll(filepath.Dir(r.path), 0o755); err != nil {
		return fmt.Errorf("create flow log directory: %w", err)
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open flow log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open flow log: %w", err)
	}
	r.f, r.size = f, st.Size()
	return nil
}

// rotate shifts events.log.N-1 to .N, the current file to .1, and starts
// a new one. Every line is in exactly one file.
func (r *rotatingFile) rotate() error {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	for i := r.backups - 1; i >= 1; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", r.path, i), fmt.Sprintf("%s.%d", r.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate flow log: %w", err)
		}
	}
	if r.backups > 0 {
		if err := os.Rename(r.path, r.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate flow log: %w", err)
		}
	} else if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate flow log: %w", err)
	}
	return r.open()
}

// writeLine appends one line (with its newline).
func (r *rotatingFile) writeLine(line []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := func() error {
		if r.f == nil {
			if err := r.open(); err != nil {
				return err
			}
		}
		if r.size > 0 && r.size+int64(len(line)) > r.maxSize {
			if err := r.rotate(); err != nil {
				return err
			}
		}
		before := r.size
		n, err := r.f.Write(line)
		r.size += int64(n)
		if err != nil {
			// A short write (disk full) leaves part of a line: cut it off,
			// so the file only ever holds whole records.
			if terr := r.f.Truncate(before); terr == nil {
				r.size = before
			}
			r.f.Close()
			r.f = nil
			return fmt.Errorf("write flow log: %w", err)
		}
		return nil
	}()
	if err != nil {
		r.lost++
		r.lastErr = err
		return
	}
	r.written++
	r.lastErr = nil
}

func (r *rotatingFile) stats() (written, lost uint64, lastErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.written, r.lost, r.lastErr
}

func (r *rotatingFile) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

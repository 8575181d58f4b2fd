package agent

import (
	"context"
	"errors"
	"sync"
)

// regenQueue coalesces regeneration requests: every waiter that asked
// before a run started is answered by that run's result.
type regenQueue struct {
	mu      sync.Mutex
	pending []chan error
	kick    chan struct{}
	stopped bool
}

var errStopped = errors.New("agent stopped")

func (q *regenQueue) init() { q.kick = make(chan struct{}, 1) }

// wait requests a regeneration and waits for one that started after the
// request.
func (q *regenQueue) wait(ctx context.Context) error {
	ch := make(chan error, 1)
	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		return errStopped
	}
	q.pending = append(q.pending, ch)
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (q *regenQueue) run(ctx context.Context, regenerate func() error) {
	for {
		select {
		case <-ctx.Done():
			q.mu.Lock()
			q.stopped = true
			for _, ch := range q.pending {
				ch <- errStopped
			}
			q.pending = nil
			q.mu.Unlock()
			return
		case <-q.kick:
		}
		q.mu.Lock()
		waiters := q.pending
		q.pending = nil
		q.mu.Unlock()
		if len(waiters) == 0 {
			continue
		}
		err := regenerate()
		for _, ch := range waiters {
			ch <- err
		}
	}
}

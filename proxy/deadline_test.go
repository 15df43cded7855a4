package proxy

import (
	"testing"
	"time"
)

func TestLazyDeadline(t *testing.T) {
	var sets []time.Time
	d := lazyDeadline{set: func(at time.Time) error { sets = append(sets, at); return nil }}
	const timeout = 8 * time.Second // the 100 extends below must run within its 1 s slack
	before := time.Now()
	d.extend(timeout)
	if len(sets) != 1 || sets[0].Before(before.Add(timeout)) {
		t.Fatalf("first extend set %v, want one deadline at least %v ahead", sets, timeout)
	}
	// Within the slack the deadline stays: still at least timeout ahead.
	for range 100 {
		d.extend(timeout)
	}
	if len(sets) != 1 {
		t.Fatalf("extend moved the deadline %d times within its slack", len(sets)-1)
	}
	// Once it has come closer than timeout, it moves.
	d.at = time.Now().Add(timeout - time.Millisecond)
	now := time.Now()
	d.extend(timeout)
	if len(sets) != 2 || sets[1].Before(now.Add(timeout)) || sets[1].After(now.Add(timeout+deadlineSlack(timeout)+time.Second)) {
		t.Fatalf("extend near the deadline set %v, want one about %v ahead", sets[1:], timeout)
	}
	d.clear()
	if len(sets) != 3 || !sets[2].IsZero() || !d.at.IsZero() {
		t.Fatalf("clear set %v", sets[2:])
	}
	// After clear, extend sets again.
	d.extend(timeout)
	if len(sets) != 4 {
		t.Fatal("extend after clear did not set a deadline")
	}
}

func TestDeadlineSlack(t *testing.T) {
	for _, tc := range []struct{ timeout, want time.Duration }{
		{time.Second, time.Second / 8},
		{8 * time.Second, time.Second},
		{5 * time.Minute, time.Second},
		{0, 0},
	} {
		if got := deadlineSlack(tc.timeout); got != tc.want {
			t.Errorf("deadlineSlack(%v) = %v, want %v", tc.timeout, got, tc.want)
		}
	}
}

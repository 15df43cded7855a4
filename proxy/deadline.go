package proxy

import "time"

// lazyDeadline keeps one deadline of a connection at least some timeout
// ahead of now, but moves it only when it has come closer than that: setting
// a deadline re-arms a runtime timer and can wake Go's network poller (an
// eventfd write and a thread wakeup), which for a short control line costs
// more than relaying it. So a deadline fires between timeout and
// timeout+slack after the last activity — never early — and a busy
// connection moves it about once per slack rather than once per line.
//
// It is not safe for concurrent use: each belongs to the one goroutine (or
// lock) that reads or writes in that direction.
type lazyDeadline struct {
	set func(time.Time) error // SetReadDeadline or SetWriteDeadline
	at  time.Time             // the deadline set; zero: none
}

// deadlineSlack is how late a lazy deadline may fire: an eighth of the
// timeout, at most a second.
func deadlineSlack(timeout time.Duration) time.Duration {
	return min(timeout/8, time.Second)
}

// extend makes sure the deadline is at least timeout from now.
func (d *lazyDeadline) extend(timeout time.Duration) {
	now := time.Now()
	if !d.at.IsZero() && d.at.Sub(now) >= timeout {
		return
	}
	d.at = now.Add(timeout + deadlineSlack(timeout))
	d.set(d.at)
}

// clear removes the deadline.
func (d *lazyDeadline) clear() {
	d.at = time.Time{}
	d.set(time.Time{})
}

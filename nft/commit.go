package nft

import (
	"errors"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// openReq is one Open waiting to be committed.
type openReq struct {
	p    *pinhole
	ttl  time.Duration
	done chan error // capacity 1; receives err once, after OnPinholeEnd of what it replaced
	err  error      // the outcome, set by commitBatchLocked

	// Set by queueOpens: replaces is the outstanding pinhole of the same key
	// (an earlier opening of the batch or a committed pinhole), and removes
	// says whether a committed batch proves that its one-shot key was still
	// in the kernel, i.e. that no connection used it.
	replaces *pinhole
	removes  bool
	// keyGone: an earlier attempt learnt that the key of the pinhole it
	// replaces is gone from the kernel (used or expired).
	keyGone bool
}

// commit queues r and returns once the kernel acknowledged (or refused) it.
//
// Group commit: the caller that finds no commit running becomes the
// committer, takes everything queued and sends it as one netlink batch;
// Opens arriving meanwhile queue up and go together in the next batch, which
// a new goroutine commits so that the first committer returns with its own
// result at once. At one Open at a time this is the plain round trip.
func (fw *Firewall) commit(r *openReq) error {
	fw.pendMu.Lock()
	fw.pending = append(fw.pending, r)
	lead := !fw.committing
	fw.committing = true
	fw.pendMu.Unlock()
	if lead {
		fw.commitPending()
	}
	return <-r.done
}

// commitPending commits one batch of queued Opens and hands on what queued
// meanwhile.
func (fw *Firewall) commitPending() {
	fw.pendMu.Lock()
	batch := fw.pending
	fw.pending = nil
	fw.pendMu.Unlock()

	fw.commitBatch(batch)

	fw.pendMu.Lock()
	more := len(fw.pending) > 0
	fw.committing = more
	fw.pendMu.Unlock()
	if more {
		go fw.commitPending()
	}
}

// commitBatch sends the openings of batch in one netlink batch. The batch is
// atomic, so if the kernel refuses it each opening is retried on its own,
// and only the failing ones fail. OnPinholeEnd runs for the pinholes the
// openings replaced after nlMu is released, and before the Opens return.
func (fw *Firewall) commitBatch(batch []*openReq) {
	fw.nlMu.Lock()
	ended := fw.commitBatchLocked(batch)
	fw.nlMu.Unlock()
	fw.notify(ended)
	for _, r := range batch {
		r.done <- r.err
	}
}

// commitBatchLocked commits batch, sets each opening's err and returns the
// pinholes that ended. nlMu is held.
func (fw *Firewall) commitBatchLocked(batch []*openReq) []*pinhole {
	fw.mu.Lock()
	closed := fw.closed
	fw.mu.Unlock()
	if closed {
		for _, r := range batch {
			r.err = ErrClosed
		}
		return nil
	}

	err := fw.send(func() error { return fw.queueOpens(batch) })
	if err == nil {
		return fw.register(batch)
	}
	if len(batch) == 1 {
		return fw.commitOne(batch[0], err)
	}
	var ended []*pinhole
	for _, r := range batch {
		err := fw.send(func() error { return fw.queueOpens([]*openReq{r}) })
		ended = append(ended, fw.commitOne(r, err)...)
	}
	return ended
}

// commitOne finishes an opening committed on its own with outcome err. If
// the kernel refused it because the one-shot key of the pinhole it replaces
// is gone (ENOENT: a connection used it, or it expired), it is committed
// again without that deletion; register then keeps the replaced pinhole until
// its conntrack event or its expiry says which. nlMu is held.
func (fw *Firewall) commitOne(r *openReq, err error) []*pinhole {
	if errors.Is(err, unix.ENOENT) && r.replaces != nil && r.removes && !r.keyGone {
		r.keyGone = true
		err = fw.send(func() error { return fw.queueOpens([]*openReq{r}) })
	}
	if err != nil {
		r.err = wrap("nftables", "add pinhole "+r.p.flow.String()+" to "+r.p.setNames(), err)
		return nil
	}
	return fw.register([]*openReq{r})
}

// queueOpens queues the netlink messages of the openings, in order, for
// send. For each it first removes what the kernel may hold for its key:
//
//   - the elements of the outstanding pinhole it replaces (refresh). If that
//     pinhole was committed earlier and its key is not known to be gone, its
//     one-shot key is deleted, not destroyed: the kernel then refuses the
//     batch (ENOENT) if a connection used it, so that register knows whether
//     the replaced pinhole is unused or its conntrack event is still to come.
//     An earlier opening of the same batch has no history: destroyed;
//   - the DNAT/SNAT data an ended NAT pinhole of the key may have left (a
//     stale snat element must not apply to a pinhole without SNAT).
//
// DESTROY ignores missing elements. nlMu is held.
func (fw *Firewall) queueOpens(batch []*openReq) error {
	var inBatch map[pinKey]*pinhole
	if len(batch) > 1 {
		inBatch = make(map[pinKey]*pinhole, len(batch))
	}
	fw.mu.Lock()
	stale := make([][]*nftables.Set, len(batch))
	del := make([]*nftables.Set, len(batch)) // where to delete the replaced key
	for i, r := range batch {
		k := r.p.key
		r.replaces, r.removes = nil, false
		if old := inBatch[k]; old != nil {
			r.replaces, r.removes = old, true
			stale[i] = old.sets()
		} else if old := fw.entries[k]; old != nil {
			r.replaces = old
			r.removes = !old.revoked && !r.keyGone
			stale[i] = old.sets()
			if r.removes {
				del[i], stale[i] = stale[i][0], stale[i][1:]
			}
		}
		if _, dirty := fw.natDirty[k]; dirty {
			stale[i] = appendNew(stale[i], fw.natSets(r.p.fa)...)
		}
		if inBatch != nil {
			inBatch[k] = r.p
		}
	}
	fw.mu.Unlock()

	for i, r := range batch {
		p := r.p
		kb := p.keyBytes()
		if del[i] != nil {
			if err := fw.conn.SetDeleteElements(del[i], []nftables.SetElement{{Key: kb}}); err != nil {
				return err
			}
		}
		if err := fw.queueDestroy(stale[i], kb); err != nil {
			return err
		}
		for _, e := range p.elements(r.ttl) {
			if err := fw.conn.SetAddElements(e.set, []nftables.SetElement{e.elem}); err != nil {
				return err
			}
		}
	}
	return nil
}

// register records the committed openings, in order, and ends the pinholes
// they replace; it returns those for OnPinholeEnd. nlMu is held.
func (fw *Firewall) register(batch []*openReq) []*pinhole {
	var ended []*pinhole
	now := time.Now()
	fw.mu.Lock()
	for _, r := range batch {
		p := r.p
		if cur := fw.entries[p.key]; cur != nil {
			if cur == r.replaces && r.removes {
				// The batch removed its key: no connection used it.
				if fw.endLocked(cur, Revoked) {
					ended = append(ended, cur)
				}
			} else {
				// Its key was gone: it was used (the conntrack event is
				// on its way) or it expired. The event must not be taken
				// for one of p.
				fw.buryLocked(cur)
			}
		}
		// The batch destroyed whatever older NAT data the key had.
		delete(fw.natDirty, p.key)
		// The key's next connection is p's, not one that raced the last.
		delete(fw.consumed, p.key)
		fw.entries[p.key] = p
		p.expires = now.Add(r.ttl)
		fw.active++
		fw.timers.Add(1)
		p.timer = time.AfterFunc(r.ttl+expireGrace, p.expire)
	}
	fw.mu.Unlock()
	return ended
}

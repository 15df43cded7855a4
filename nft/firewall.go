package nft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	vnetlink "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/proxy"
)

// Firewall owns the "inet ftpgate" table of one network namespace and
// implements proxy.Gate with one-shot pinholes.
type Firewall struct {
	cfg Config
	log *slog.Logger
	obj *objects

	// nlMu serialises batches on conn: a google/nftables Conn buffers
	// messages per Conn, so building and flushing a batch must not interleave.
	// Lock order: nlMu before mu.
	nlMu sync.Mutex
	conn *nftables.Conn // lasting; the table is owned by this socket

	rt     *vnetlink.Handle // rtnetlink in the Firewall's namespace (nil unless Intercept)
	routes routing

	mu      sync.Mutex
	closed  bool
	entries map[pinKey]*pinhole
	// buried holds, oldest first, pinholes an Open replaced after a
	// connection had used their key or it had expired, until their conntrack
	// event or their expiry ends them: a NEW event of the key goes to the
	// oldest of them first, not to the pinhole that replaced them. See
	// buryLocked.
	buried map[pinKey][]*pinhole
	// dataConns follows admitted data connections until their conntrack
	// entries are destroyed (for OnDataEnd).
	dataConns dataConnTable
	active    int
	timers    sync.WaitGroup // running or pending expiry callbacks

	// consumed remembers for raceWindow the keys a connection used and that
	// connection's conntrack ID, to recognise a second one (see onConnNew);
	// swept when it has doubled in size.
	consumed        map[pinKey]consumedKey
	consumedSweepAt int
	raced           atomic.Uint64 // second connections cut (RacedConnections)

	// natDirty holds the keys whose DNAT/SNAT map elements an ended NAT
	// pinhole may have left in the kernel; the janitor removes them, and an
	// Open of such a key destroys them first. Guarded by mu.
	natDirty map[pinKey]struct{}

	// Openings queue here and are committed together: whoever finds no
	// commit running commits everything queued in one netlink batch, so
	// concurrent Opens cost one kernel round trip, not one each.
	pendMu     sync.Mutex
	pending    []*openReq
	committing bool

	events     *ctEvents // nil when the conntrack listener could not start
	lostLogged time.Time // when onEventsLost last logged (listener goroutine only)
	janitor    janitor   // removes the NAT data of ended NAT pinholes

	// ctq queries conntrack (SourceAddress); nil if it could not be opened,
	// with ctqErr saying why. ctqMu guards its use and closing.
	ctqMu  sync.Mutex
	ctq    *conntrack.Conn
	ctqErr error

	closeOnce sync.Once
	closeErr  error
}

// pinKey identifies a pinhole the way the kernel set does.
type pinKey struct {
	src, dst netip.Addr
	port     uint16
}

var _ proxy.Gate = (*Firewall)(nil)

// New installs the table (and, in transparent mode, the policy routing) in the
// network namespace of the calling thread and starts watching conntrack.
// Call Close to remove everything; if the process dies instead, the kernel
// removes the table with the netlink socket that owns it.
func New(cfg Config, log *slog.Logger) (*Firewall, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Every socket below must be opened in the caller's namespace: keep this
	// goroutine on its thread while they are created.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	fw := &Firewall{cfg: cfg, log: log, entries: map[pinKey]*pinhole{}, buried: map[pinKey][]*pinhole{}, dataConns: newDataConnTable(maxDataConns),
		consumed: map[pinKey]consumedKey{},
		natDirty: map[pinKey]struct{}{}, janitor: newJanitor()}
	fw.conn, err = nftables.New(nftables.AsLasting(), nftables.WithSockOptions(sizeBuffers))
	if err != nil {
		return nil, wrap("nftables", "open netlink socket", err)
	}
	if err := fw.install(); err != nil {
		_ = fw.conn.CloseLasting()
		return nil, err
	}
	if cfg.Intercept {
		fw.rt, err = vnetlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			fw.removeTable()
			return nil, wrap("netlink", "open rtnetlink socket", err)
		}
		if err := fw.routes.install(fw.rt, fw.conn, cfg); err != nil {
			fw.routes.remove(fw.rt)
			fw.rt.Close()
			fw.removeTable()
			return nil, err
		}
	}
	h := ctHandlers{onNew: fw.onConnNew, onLost: fw.onEventsLost, onErr: fw.onEventsErr}
	if cfg.OnDataEnd != nil {
		h.onDestroy = fw.onConnDestroy
	}
	var zone uint16 // intercepted control connections: marked, but no pinhole's
	if cfg.Intercept {
		zone = cfg.InterceptZone
	}
	fw.events, err = startCTEvents(cfg.CTMark, cfg.CTMask, zone, h)
	if err != nil {
		log.Warn("nft: cannot watch conntrack events; pinholes will be reported as expired even when used",
			"err", err)
		fw.events = nil
	}
	fw.ctq, fw.ctqErr = conntrack.Dial(nil)
	if fw.ctqErr != nil {
		fw.ctqErr = wrapHint("conntrack", "open netlink socket", fw.ctqErr, fixFor(fw.ctqErr, "load nf_conntrack_netlink"))
		log.Warn("nft: cannot query conntrack; masqueraded clients cannot be recognised", "err", fw.ctqErr)
	}
	go fw.janitor.run(fw)
	args := []any{"table", "inet " + cfg.Table, "intercept", cfg.Intercept,
		"ct_mark", fmt.Sprintf("%#x/%#x", cfg.CTMark, cfg.CTMask)}
	if cfg.Intercept {
		args = append(args, "intercept_zone", cfg.InterceptZone)
	}
	log.Info("nft: installed", args...)
	return fw, nil
}

// nlBuffer is the send and receive buffer of the nftables socket (set with
// SO_SNDBUFFORCE/SO_RCVBUFFORCE, as ftpgate has CAP_NET_ADMIN: not capped by
// net.core.wmem_max/rmem_max). Set once here, it spares every batch the
// buffer-size system calls google/nftables makes otherwise.
const nlBuffer = 4 << 20

func sizeBuffers(c *netlink.Conn) error {
	if err := c.SetWriteBuffer(nlBuffer); err != nil {
		return err
	}
	return c.SetReadBuffer(nlBuffer)
}

// send queues one netlink batch on fw.conn with queue and sends it. The
// Conn buffers messages until a Flush, whoever calls it: a queueing call
// that fails leaves what was queued before it in the buffer (and some of
// them record the error, which the next Flush returns instead of sending).
// send empties the buffer either way, so nothing of a failed batch goes out
// with — or fails — the next caller's. nlMu is held.
func (fw *Firewall) send(queue func() error) error {
	if err := queue(); err != nil {
		fw.discard()
		return err
	}
	return fw.conn.Flush()
}

// discard empties fw.conn's buffer without sending it. google/nftables has
// no call for that, but a Flush sends nothing and empties the buffer once a
// queueing call has recorded an error — and updating an anonymous set
// records one, before queueing anything.
func (fw *Firewall) discard() {
	_ = fw.conn.SetAddElements(&nftables.Set{Anonymous: true}, nil)
	_ = fw.conn.Flush()
}

// install creates the owner table with everything in it in one batch. (No
// other caller shares fw.conn yet, and a failure closes it.)
func (fw *Firewall) install() error {
	name := "inet " + fw.cfg.Table
	existing, err := fw.conn.ListTableOfFamily(fw.cfg.Table, nftables.TableFamilyINet)
	switch {
	case err == nil && existing.Flags&nftables.TableFlagOwner != 0:
		return fmt.Errorf("nftables: table %s already exists and is owned by netlink port %d — another ftpgate runs in this network namespace: stop it first (one ftpgate per network namespace; a program embedding package nft can name another table, and in transparent mode must also use another fwmark and route table)", name, existing.Owner)
	case err == nil:
		fw.log.Warn("nft: replacing existing table without owner flag", "table", name)
		fw.conn.DelTable(existing)
	case errors.Is(err, unix.EPERM):
		return wrap("nftables", "list table "+name, err)
	}
	fw.obj = newObjects(fw.cfg, fw.cfg.Table, nftables.TableFlagOwner)
	if err := fw.obj.add(fw.conn, fw.cfg); err != nil {
		return wrap("nftables", "prepare table "+name, err)
	}
	if err := fw.conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			// An expression type the kernel could not find or autoload.
			return wrapHint("nftables", "create table "+name, err,
				"the kernel lacks an nftables module ftpgate needs (nft_ct, nft_dynset, nft_socket, nft_tproxy, nft_fib_inet) — run `ftpgate check` to see which")
		}
		return wrap("nftables", "create table "+name, err)
	}
	return nil
}

// removeTable deletes the table explicitly, then closes the owning socket.
func (fw *Firewall) removeTable() error {
	fw.conn.DelTable(fw.obj.table)
	err := fw.conn.Flush()
	if errors.Is(err, unix.ENOENT) {
		err = nil
	}
	if err != nil {
		err = wrap("nftables", "delete table inet "+fw.cfg.Table, err)
	}
	if cerr := fw.conn.CloseLasting(); cerr != nil && err == nil {
		err = wrap("nftables", "close netlink socket", cerr)
	}
	return err
}

// Close removes the table, the policy routing and stops watching conntrack.
// Outstanding pinholes end as Revoked; those whose key was already gone, as
// used or expired (by their expiry time). It is idempotent.
func (fw *Firewall) Close() error {
	fw.closeOnce.Do(func() { fw.closeErr = fw.close() })
	return fw.closeErr
}

func (fw *Firewall) close() error {
	fw.nlMu.Lock()
	fw.mu.Lock()
	fw.closed = true
	var ended []*pinhole
	for k, e := range fw.entries {
		if fw.endLocked(e, Revoked) {
			ended = append(ended, e)
		}
		delete(fw.entries, k)
	}
	for _, q := range fw.buried {
		for _, e := range slices.Clone(q) {
			// Its key was gone from the kernel: used (the event is not read
			// yet) or expired (the timer has not fired yet).
			end := Used
			if !time.Now().Before(e.expires) {
				end = Expired
			}
			if fw.endLocked(e, end) {
				ended = append(ended, e)
			}
		}
	}
	fw.mu.Unlock()

	errs := []error{fw.removeTable()}
	fw.nlMu.Unlock()
	if fw.rt != nil {
		errs = append(errs, fw.routes.remove(fw.rt))
		fw.rt.Close()
	}
	if fw.events != nil {
		fw.events.stop()
	}
	// No conntrack event can queue work for the janitor any more.
	fw.janitor.shutdown()
	fw.ctqMu.Lock()
	if fw.ctq != nil {
		_ = fw.ctq.Close()
		fw.ctq = nil
	}
	fw.ctqErr = ErrClosed
	fw.ctqMu.Unlock()
	fw.timers.Wait()
	fw.notify(ended)
	fw.log.Info("nft: removed", "table", "inet "+fw.cfg.Table)
	return errors.Join(errs...)
}

// Active returns the number of pinholes currently open.
func (fw *Firewall) Active() int {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.active
}

// PinholeInfo describes one open pinhole, for 'ftpgate status'.
type PinholeInfo struct {
	Flow    proxy.Flow `json:"-"`
	Desc    string     `json:"flow"`
	Expires time.Time  `json:"expires"`
}

// Pinholes lists the pinholes still open (neither used nor expired).
func (fw *Firewall) Pinholes() []PinholeInfo {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	var list []PinholeInfo
	for _, e := range fw.entries {
		if !e.ended && !e.revoked {
			list = append(list, PinholeInfo{Flow: e.flow, Desc: e.flow.String(), Expires: e.expires})
		}
	}
	slices.SortFunc(list, func(a, b PinholeInfo) int { return a.Expires.Compare(b.Expires) })
	return list
}

// pinhole is one opening: an element of pin4/pin6 (plain), or elements of
// natpin4/6, dnat4/6 and optionally snat4/6 with the same key (NAT).
type pinhole struct {
	fw      *Firewall
	flow    proxy.Flow
	key     pinKey
	nat     natSpec // zero for a plain pinhole
	fa      *family
	timer   *time.Timer
	expires time.Time // when the kernel drops the element if unused
	ended   bool      // OnPinholeEnd was (or is about to be) called
	revoked bool      // Close or a refresh found the element gone; waiting for used/expired
	buried  bool      // in fw.buried
	end     PinholeEnd
	done    chan struct{} // closed by endLocked, when ended is set
}

// Done is closed when the pinhole ends: used, expired, closed, replaced by
// an Open of the same key, or the Firewall closed — at the moment the
// OnPinholeEnd call for it is decided (the call itself may still be running).
func (p *pinhole) Done() <-chan struct{} { return p.done }

// Open allows one TCP connection from f.Src to f.Dst for ttl. It returns after
// the kernel acknowledged every element of the opening (one batch). An Open
// for a key (Src, Dst, Dst port) that is still outstanding replaces it,
// whether either is a NAT pinhole or not: the earlier Pinhole ends unused, or
// — if a connection used it already — when its conntrack event is read.
//
// With f.Target valid the connection is DNAT'ed to f.Target and, with f.SNAT
// valid, source-NAT'ed to f.SNAT (any source port); f.Dst is then normally an
// address of this host. f.SNAT requires f.Target.
func (fw *Firewall) Open(ctx context.Context, f proxy.Flow, ttl time.Duration) (proxy.Pinhole, error) {
	key, nat, err := parseFlow(f)
	if err != nil {
		return nil, err
	}
	if fw.cfg.Intercept && slices.Contains(fw.cfg.InterceptPorts, key.port) {
		// Its connection would become a control session of ftpgate's, and
		// the pinhole would stay unused until its ttl.
		return nil, fmt.Errorf("nft: pinhole %s: %w (--intercept-port %d): its connections are diverted to ftpgate's listener, never let through a pinhole", f, ErrInterceptPort, key.port)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("nft: pinhole %s: ttl %v must be positive", f, ttl)
	}
	// The kernel counts element timeouts in milliseconds.
	ttl = ttl.Round(time.Millisecond)
	if ttl < time.Millisecond {
		ttl = time.Millisecond
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("nft: pinhole %s: %w", f, err)
	}

	p := &pinhole{fw: fw, flow: f, key: key, nat: nat, fa: familyOf(key.src), done: make(chan struct{})}
	if err := fw.commit(&openReq{p: p, ttl: ttl, done: make(chan error, 1)}); err != nil {
		return nil, err
	}
	return p, nil
}

// parseFlow validates f and returns its set key and, for a NAT flow, its
// translation, all normalised (IPv4-mapped addresses unmapped, no zones).
func parseFlow(f proxy.Flow) (pinKey, natSpec, error) {
	src := f.Src.Unmap().WithZone("")
	dst := f.Dst.Addr().Unmap().WithZone("")
	switch {
	case !src.IsValid() || !dst.IsValid():
		return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: source and destination addresses are required", f)
	case src.Is4() != dst.Is4():
		return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: source and destination are of different address families", f)
	case f.Dst.Port() == 0:
		return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: destination port 0 is not a port", f)
	}
	key := pinKey{src: src, dst: dst, port: f.Dst.Port()}
	var nat natSpec
	if f.Target.IsValid() {
		to := f.Target.Addr().Unmap().WithZone("")
		switch {
		case to.Is4() != src.Is4():
			return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: DNAT target %s is not of the flow's address family (%s)", f, f.Target, familyOf(src).name)
		case to.IsUnspecified():
			return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: DNAT target address %s is unspecified", f, to)
		case f.Target.Port() == 0:
			return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: DNAT target port 0 is not a port", f)
		}
		nat.to = netip.AddrPortFrom(to, f.Target.Port())
	}
	if f.SNAT.IsValid() {
		sa := f.SNAT.Unmap().WithZone("")
		switch {
		case !nat.to.IsValid():
			return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: SNAT without a DNAT target is not supported — source NAT applies only to DNAT'ed data connections", f)
		case sa.Is4() != src.Is4():
			return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: SNAT address %s is not of the flow's address family (%s)", f, f.SNAT, familyOf(src).name)
		case sa.IsUnspecified():
			return pinKey{}, natSpec{}, fmt.Errorf("nft: pinhole %s: SNAT address %s is unspecified", f, sa)
		}
		nat.snat = sa
	}
	return key, nat, nil
}

// endLocked marks e ended and forgets it; it reports whether the caller must
// call OnPinholeEnd for it (false if it had ended already). fw.mu is held.
func (fw *Firewall) endLocked(e *pinhole, end PinholeEnd) bool {
	if e.ended {
		return false
	}
	e.ended, e.end = true, end
	close(e.done)
	if !e.revoked {
		fw.active--
	}
	if e.timer != nil && e.timer.Stop() {
		fw.timers.Done()
	}
	if fw.entries[e.key] == e {
		delete(fw.entries, e.key)
	}
	if e.buried {
		q := slices.DeleteFunc(fw.buried[e.key], func(b *pinhole) bool { return b == e })
		if len(q) == 0 {
			delete(fw.buried, e.key)
		} else {
			fw.buried[e.key] = q
		}
	}
	if e.isNAT() {
		// Whether used, expired or replaced, its DNAT/SNAT data may still
		// be in the kernel (a successful Close says otherwise afterwards).
		fw.natDirty[e.key] = struct{}{}
		fw.janitor.add(e)
	}
	return true
}

// buryLocked sets aside e, an outstanding pinhole that an Open is replacing
// although its one-shot key is gone from the kernel: a connection used it
// (its conntrack NEW event may not have been read yet) or the kernel expired
// it (its timer, expireGrace later, has not fired yet). The events of the
// key arrive in the order the connections used the elements, so the next
// NEW event of the key is e's if e was used; its timer ends it otherwise.
// Left in fw.entries, that event would end the new pinhole as used while
// its element is still live — its Close would then leave it in the kernel,
// and the janitor would remove a NAT pinhole's data under it. An expired e
// takes, within that grace second, the event of a connection that used the
// new pinhole instead: the new one is then reported expired — a wrong count,
// not a hole. fw.mu is held.
func (fw *Firewall) buryLocked(e *pinhole) {
	if e.ended || e.buried {
		return
	}
	if !e.revoked {
		e.revoked = true
		fw.active--
	}
	if fw.entries[e.key] == e {
		delete(fw.entries, e.key)
	}
	e.buried = true
	fw.buried[e.key] = append(fw.buried[e.key], e)
}

// notify calls OnPinholeEnd for ended pinholes; no locks may be held.
func (fw *Firewall) notify(ended []*pinhole) {
	if fw.cfg.OnPinholeEnd == nil {
		return
	}
	for _, e := range ended {
		fw.cfg.OnPinholeEnd(e.flow, e.end)
	}
}

// expire runs ttl+grace after Open.
func (p *pinhole) expire() {
	fw := p.fw
	defer fw.timers.Done()
	fw.mu.Lock()
	var ended []*pinhole
	if !p.ended {
		p.timer = nil // already fired: endLocked must not count it again
		if fw.endLocked(p, Expired) {
			ended = append(ended, p)
		}
	}
	fw.mu.Unlock()
	fw.notify(ended)
}

// onConnNew is called for every new TCP conntrack entry carrying our mark
// (outside the intercept zone): a connection used the pinhole of key k.
//
// It can be a second one. The rule's set lookup and its dynset delete are
// two steps, and the kernel ignores whether the delete found the element:
// two opening SYNs of the same key (from two source ports) processed at the
// same moment on two CPUs can both pass. Nothing in nftables makes the two
// steps one, so the second connection is cut here, after the fact: an event
// of a key whose pinhole a connection used within raceWindow, from another
// conntrack entry, when no pinhole of the key is open, gets its entry
// deleted (cutRaced).
func (fw *Firewall) onConnNew(k pinKey, id uint32, orig conntrack.Tuple, zone uint16) {
	fw.mu.Lock()
	var ended []*pinhole
	e := fw.entries[k]
	if q := fw.buried[k]; len(q) > 0 {
		e = q[0] // see buryLocked
	}
	raced := false
	switch {
	case e != nil:
		if fw.endLocked(e, Used) {
			ended = append(ended, e)
			if fw.cfg.OnDataEnd != nil {
				fw.dataConns.add(id, e.flow)
			}
			fw.consumedLocked(k, id)
			// A NAT pinhole's DNAT/SNAT data has served (NAT is bound to
			// the conntrack entry now): endLocked handed it to the janitor.
		}
	default:
		c, ok := fw.consumed[k]
		raced = ok && c.id != id && time.Since(c.at) < raceWindow
	}
	fw.mu.Unlock()
	fw.notify(ended)
	if raced {
		fw.cutRaced(id, orig, zone)
	}
}

// raceWindow is how long after a connection used a pinhole a second one of
// its key is taken for one that raced it. Their NEW events are sent when
// each entry is confirmed, microseconds apart, and read one after the other.
const raceWindow = time.Second

// consumedKey is a key a connection used, when, and that connection's ID.
type consumedKey struct {
	id uint32
	at time.Time
}

// consumedLocked remembers that connection id used key k. fw.mu is held.
func (fw *Firewall) consumedLocked(k pinKey, id uint32) {
	now := time.Now()
	if len(fw.consumed) >= fw.consumedSweepAt {
		for key, c := range fw.consumed {
			if now.Sub(c.at) >= raceWindow {
				delete(fw.consumed, key)
			}
		}
		fw.consumedSweepAt = max(1024, 2*len(fw.consumed))
	}
	fw.consumed[k] = consumedKey{id: id, at: now}
}

// cutRaced deletes the conntrack entry (id, orig, in zone) of a second
// connection through a one-shot pinhole. The zone is the entry's: a host
// that zones its forwarded traffic (per interface, per VRF) has pinhole
// connections outside zone 0, and looked up in zone 0 such an entry is
// not found — and was taken for one gone already. Its opening SYN has gone through already; with
// the entry gone, its next packets find none, carry no ct mark, and a host
// filter that drops what ftpgate did not admit (the setting in which
// pinholes matter) drops them.
func (fw *Firewall) cutRaced(id uint32, orig conntrack.Tuple, zone uint16) {
	n := fw.raced.Add(1)
	fw.ctqMu.Lock()
	err := fw.ctqErr
	if fw.ctq != nil {
		var f conntrack.Flow
		// Only that entry: the tuple could have been reused meanwhile.
		if f, err = fw.ctq.Get(conntrack.Flow{TupleOrig: orig, Zone: zone}); err == nil && f.ID == id {
			err = fw.ctq.Delete(conntrack.Flow{TupleOrig: orig, Zone: zone})
		}
		if errors.Is(err, unix.ENOENT) {
			err = nil // gone already
		}
	}
	fw.ctqMu.Unlock()
	src := netip.AddrPortFrom(orig.IP.SourceAddress.Unmap(), orig.Proto.SourcePort)
	dst := netip.AddrPortFrom(orig.IP.DestinationAddress.Unmap(), orig.Proto.DestinationPort)
	attrs := []any{"src", src, "dst", dst}
	hand := "conntrack -D -p tcp --orig-src " + src.Addr().String() + " --sport " + fmt.Sprint(src.Port())
	if zone != 0 {
		attrs = append(attrs, "zone", zone)
		hand += " -w " + fmt.Sprint(zone)
	}
	if err != nil {
		fw.log.Error("nft: a second connection got through a one-shot pinhole (its opening SYN raced the first one's), and its conntrack entry cannot be deleted — delete it by hand: "+hand,
			append(attrs, "err", wrap("conntrack", "delete entry", err), "raced_total", n)...)
		return
	}
	fw.log.Warn("nft: a second connection got through a one-shot pinhole (its opening SYN raced the first one's); its conntrack entry is deleted, which cuts it",
		append(attrs, "raced_total", n)...)
}

// RacedConnections returns how many second connections through a one-shot
// pinhole were found and cut (see onConnNew).
func (fw *Firewall) RacedConnections() uint64 { return fw.raced.Load() }

// lostLogEvery is how often, at most, lost conntrack events are logged.
const lostLogEvery = time.Minute

// onEventsLost logs, at most every lostLogEvery, that the kernel dropped
// conntrack events.
func (fw *Firewall) onEventsLost(lost uint64) {
	now := time.Now()
	if now.Sub(fw.lostLogged) < lostLogEvery {
		return // only the listener's goroutine gets here
	}
	fw.lostLogged = now
	fw.log.Warn("nft: conntrack events lost: ftpgate did not read them as fast as they came and the event socket's buffer filled up; pinholes used meanwhile are reported as expired and their data connections are not counted — if it recurs, give ftpgate more CPU time (--procs, --rt-priority)",
		"overruns_total", lost)
}

func (fw *Firewall) onEventsErr(err error, stopped bool) {
	if stopped {
		fw.log.Error("nft: conntrack event listener stopped; pinholes used from now on are reported as expired and data connections are not counted — restart ftpgate", "err", err)
		return
	}
	fw.log.Warn("nft: conntrack event skipped", "err", err)
}

// LostEvents returns how many times the kernel dropped conntrack events
// because the listener's socket buffer was full (0 without a listener).
func (fw *Firewall) LostEvents() uint64 {
	if fw.events == nil {
		return 0
	}
	return fw.events.lost.Load()
}

// EventsListening reports whether the conntrack event listener runs: false
// if it could not start (New logged why) or stopped on a fatal socket error
// (onEventsErr logged it) or because the Firewall was closed. Without it,
// used pinholes are reported as expired, data connections are not counted
// and connections racing through one-shot pinholes are not cut.
func (fw *Firewall) EventsListening() bool {
	return fw.events != nil && !fw.events.ended.Load()
}

// maxDataConns bounds the data connections followed until their conntrack
// entries go.
const maxDataConns = 1 << 16

// dataConnTable maps the conntrack IDs of admitted data connections to their
// flows, holding at most max. A DESTROY event can be lost (see LostEvents),
// and its entry would then stay for good: were the table simply capped, those
// would pile up until no data connection was counted any more. Instead it
// keeps two generations of at most max/2 entries each and, when the newer is
// full, forgets the older — the oldest entries, those most likely to be
// leftovers. A data connection still open after max/2 to max newer ones is
// not counted.
type dataConnTable struct {
	max      int
	cur, old map[uint32]proxy.Flow
}

func newDataConnTable(max int) dataConnTable {
	return dataConnTable{max: max, cur: map[uint32]proxy.Flow{}, old: map[uint32]proxy.Flow{}}
}

func (d *dataConnTable) add(id uint32, f proxy.Flow) {
	if len(d.cur) >= d.max/2 {
		d.old, d.cur = d.cur, make(map[uint32]proxy.Flow, len(d.cur))
	}
	delete(d.old, id) // a reused ID
	d.cur[id] = f
}

// take removes id and returns its flow, if followed.
func (d *dataConnTable) take(id uint32) (proxy.Flow, bool) {
	for _, m := range []map[uint32]proxy.Flow{d.cur, d.old} {
		if f, ok := m[id]; ok {
			delete(m, id)
			return f, true
		}
	}
	return proxy.Flow{}, false
}

func (d *dataConnTable) len() int { return len(d.cur) + len(d.old) }

// onConnDestroy reports a followed data connection's byte counters.
func (fw *Firewall) onConnDestroy(id uint32, origBytes, replyBytes uint64) {
	fw.mu.Lock()
	f, ok := fw.dataConns.take(id)
	fw.mu.Unlock()
	if ok {
		fw.cfg.OnDataEnd(f, origBytes, replyBytes)
	}
}

// Close revokes the pinhole if it is still open. It is idempotent.
func (p *pinhole) Close() error {
	ended, err := p.close()
	p.fw.notify(ended) // without nlMu
	return err
}

// close does Close's work with nlMu held and returns what ended.
func (p *pinhole) close() ([]*pinhole, error) {
	fw := p.fw
	fw.nlMu.Lock()
	defer fw.nlMu.Unlock()
	fw.mu.Lock()
	if p.ended || p.revoked || fw.closed {
		fw.mu.Unlock()
		return nil, nil
	}
	fw.mu.Unlock()

	// Deleting (not destroying) the one-shot key tells whether it was still
	// there; a NAT pinhole's data goes in the same batch.
	kb := p.keyBytes()
	err := fw.send(func() error {
		if err := fw.conn.SetDeleteElements(p.sets()[0], []nftables.SetElement{{Key: kb}}); err != nil {
			return err
		}
		return fw.queueDestroy(p.sets()[1:], kb)
	})
	fw.mu.Lock()
	var ended []*pinhole
	cleanup := false
	switch {
	case err == nil:
		// We removed it, so no connection consumed it; its NAT data went
		// in the same batch.
		if fw.endLocked(p, Revoked) {
			ended = append(ended, p)
		}
		delete(fw.natDirty, p.key)
	case errors.Is(err, unix.ENOENT):
		// Used or expired in the kernel already. Let the conntrack event or
		// the expiry timer tell which; it no longer counts as active.
		if !p.ended {
			p.revoked = true
			fw.active--
		}
		// The failed batch removed nothing: remove the NAT data unless a
		// newer pinhole owns the key (none can appear: nlMu is held).
		cur := fw.entries[p.key]
		cleanup = p.isNAT() && (cur == nil || cur == p)
		err = nil
	default:
		err = wrap("nftables", "remove pinhole "+p.flow.String(), err)
	}
	fw.mu.Unlock()
	if cleanup {
		err = fw.send(func() error { return fw.queueDestroy(p.sets()[1:], kb) })
		if err != nil {
			err = wrap("nftables", "remove the NAT data of pinhole "+p.flow.String(), err)
		} else {
			fw.mu.Lock()
			if fw.entries[p.key] == nil {
				delete(fw.natDirty, p.key)
			}
			fw.mu.Unlock()
		}
	}
	return ended, err
}

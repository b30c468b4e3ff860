/* What a rank waits for, when one of the shim's waits goes on for long (IVSHIM_STALL_SECONDS,
 * 60 s by default with IVSHIM_VERBOSE): a job that hangs in the shim says, on each rank's
 * standard error, which messages and which switches of its pairs it still waits for, before
 * anyone kills it. ivs_wait_pause calls it ivs.stall_ns into one wait, then at every doubling. It only reads the rank's own
 * state, plus the rings' positions while the rank holds the region (values, never followed). */
#include <stdarg.h>
#include <stdio.h>
#include "ivshim.h"

/* Appends to a fixed buffer; what does not fit is cut, with "..." at the end. */
struct line {
	char s[2048];
	size_t n;
};

static void add(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(struct line *l, const char *fmt, ...)
{
	if (l->n >= sizeof l->s)
		return;
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(l->s + l->n, sizeof l->s - l->n, fmt, ap);
	va_end(ap);
	l->n = k < 0 ? sizeof l->s : l->n + (size_t)k;
	if (l->n >= sizeof l->s)
		snprintf(l->s + sizeof l->s - 4, 4, "...");
}

/* The path of each direction, with the join switch's state (join.c) while on the library. */
static const char *tx_path(const struct ivs_peer *p)
{
	static const char *const on_lib[] = {
		[IVS_JTX_NONE] = "library", [IVS_JTX_ASKED] = "library, asked to take a ring",
		[IVS_JTX_RING] = "library, its ring closed again", [IVS_JTX_OFF] = "library for good"};
	if (p->tx_net)
		return p->tx_join < sizeof on_lib / sizeof *on_lib ? on_lib[p->tx_join] : "library";
	if (p->closing)
		return "closing";
	if (!p->tx.ring)
		return p->tx_want ? "ring asked for" : "no ring yet";
	return p->joined ? "ring (joined)" : "ring";
}

static const char *rx_path(const struct ivs_peer *p)
{
	static const char *const on_lib[] = {
		[IVS_JRX_NONE] = "library", [IVS_JRX_ASKED] = "library, asked to read a ring",
		[IVS_JRX_AWAIT] = "library, awaiting its ring's first record",
		[IVS_JRX_RING] = "library, its ring's MARK read", [IVS_JRX_OFF] = "library for good"};
	if (p->rx_net)
		return p->rx_join < sizeof on_lib / sizeof *on_lib ? on_lib[p->rx_join] : "library";
	if (p->rx_mark)
		return "after its MARK";
	if (!p->rx.ring)
		return "no ring yet";
	return p->joined ? "ring (joined)" : "ring";
}

/* A peer is worth a word when it is not plainly on a ring both ways, or has work queued. */
static int peer_notable(const struct ivs_peer *p)
{
	return p->sendq || p->rx_cur || p->nacks || p->parked || p->closing || p->tx_net || p->rx_mark ||
	       p->rx_net || p->leave_seen || p->join_pending || p->tx_join || p->rx_join || p->tx_want ||
	       p->ack_blocked;
}

IVS_COLD void ivs_stall_report(double waited)
{
	struct line l = {.n = 0};
	add(&l, "ivshim: rank %d: one wait has gone on %.0f s:", ivs.world_rank, waited);
	if (ivs.self_leaving || ivs.released || ivs.switching)
		add(&l, " VM leaving %d, region %s, switching %d;", ivs.self_leaving,
		    ivs.released ? "released" : "held", ivs.switching);
	add(&l, " %d sends queued, %d synchronous sends await ACKs, %d ACKs owed;", ivs.nsend_queued,
	    ivs.nsync_wait, ivs.nacks);
	int nposted = 0, nunexp = 0;
	for (struct ivs_req *r = ivs.posted; r; r = r->next)
		nposted++;
	for (struct ivs_msg *m = ivs.unexp; m; m = m->next)
		nunexp++;
	add(&l, " %d receives posted", nposted);
	if (ivs.posted)
		add(&l, " (the oldest from %d, tag %d, context %u)", ivs.posted->peer, ivs.posted->tag,
		    ivs.posted->comm ? ivs.posted->comm->ctx : 0u);
	add(&l, ", %d messages unexpected, %u wildcard receives in the library", nunexp, ivs.lib_open_any);
	for (int w = 0; ivs.peers && w < ivs.world_size; w++) {
		const struct ivs_peer *p = ivs.peers[w];
		if (!p || !peer_notable(p))
			continue;
		add(&l, "; rank %d: to it %s, from it %s", w, tx_path(p), rx_path(p));
		int q = 0;
		for (const struct ivs_req *r = p->sendq; r; r = r->next)
			q++;
		if (q)
			add(&l, ", %d sends queued%s", q, p->ack_blocked ? " (an ACK can come by the library only)" : "");
		if (p->rx_cur)
			add(&l, ", a message half in (%lu of %lu bytes)", (unsigned long)p->rx_cur->got,
			    (unsigned long)p->rx_cur->total);
		if (p->nacks)
			add(&l, ", %d ACKs owed", p->nacks);
		if (p->parked)
			add(&l, ", library messages parked");
		if (p->leave_seen)
			add(&l, ", seen leaving");
		if (p->join_pending)
			add(&l, ", joined at slot %u", p->join_slot);
		if (!ivs.released && p->tx.ring)
			add(&l, ", its ring holds %lu bytes of ours",
			    (unsigned long)(p->tx.pos - __atomic_load_n(&p->tx.ring->head, __ATOMIC_ACQUIRE)));
	}
	fprintf(stderr, "%s\n", l.s);
	fflush(stderr);
}

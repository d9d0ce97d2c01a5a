/* gateway/proxy_tcp: byte tunnels, for L4 routes on internal ports and for
 * HTTP connections after a 101 Switching Protocols (WebSocket).
 *
 * Bytes are written out of the reading side's buffer without copying; a
 * side is not read further once its buffer is full and the other side is
 * still writing the previous bytes (same locking as the HTTP path).
 *
 * Each direction ends on its own (half-close): when one side sends its FIN,
 * what it sent is delivered, the FIN is passed on (shutdown of our write
 * side towards the other; close_notify to a TLS client), and the other
 * direction keeps flowing until its side ends too; then both are closed.
 * A protocol that says "that is all" with a FIN and then waits for the
 * answer (a client of `nc -N`, some database and RPC clients) works
 * through the tunnel. A reset or a write error on either side closes both.
 * Once one direction has ended, the tunnel's idle limit is
 * GW_TUNNEL_FIN_MS instead of GW_TUNNEL_MS, so a peer that never ends its
 * side does not hold the tunnel for an hour. */
#include "gateway/proxy_internal.h"

#include "core/log.h"

#include <string.h>

/* Idle limit now: shorter once a direction has ended. */
static uint64_t tunnel_idle_ms(const gw_client_t *c)
{
    return c->fin_sent || (c->up && c->up->wr_shut) ? GW_TUNNEL_FIN_MS : GW_TUNNEL_MS;
}

/* Pass on the end of a direction once everything before it is delivered,
 * and close when both have ended. Called whenever a side's bytes have all
 * been written to the other or a side reached EOF. */
static void tunnel_check_done(gw_client_t *c)
{
    gw_upstream_t *u = c->up;
    if (!u) {
        gw_client_close(c);
        return;
    }
    bool client_flushed = c->in_off == c->in_len && !u->slot.busy && u->pp_len == 0;
    bool up_flushed = u->in_off == u->in_len && !c->slot.busy;
    bool client_done = c->peer_eof && client_flushed; /* client -> backend ended */
    bool up_done = u->eof && up_flushed;              /* backend -> client ended */
    if (client_done && up_done) {
        gw_client_close(c);
        return;
    }
    if (client_done && !u->wr_shut && u->connected) {
        gw_up_shut_write(u);
        gw_client_set_deadline(c, GW_TUNNEL_FIN_MS, TMO_TUNNEL);
    }
    if (up_done && !c->fin_sent) {
        gw_client_shut_write(c);
        if (!c->closing)
            gw_client_set_deadline(c, GW_TUNNEL_FIN_MS, TMO_TUNNEL);
    }
}

/* Client -> backend. */
void gw_tunnel_client_bytes(gw_client_t *c)
{
    gw_upstream_t *u = c->up;
    if (c->closing)
        return;
    if (!u || !u->connected || u->slot.busy) {
        return;
    }
    size_t avail = c->in_len - c->in_off;
    if (avail == 0 && !u->pp_len) {
        if (c->in_locks == 0)
            c->in_off = c->in_len = 0;
        if (c->peer_eof)
            tunnel_check_done(c);
        return;
    }
    if (c->in_locks == 0 && c->in_off > 0) {
        /* keep the whole buffer free for reading ahead */
        memmove(c->in, c->in + c->in_off, avail);
        c->in_len = avail;
        c->in_off = 0;
    }
    gw_wslot_t *s = gw_slot_get(&u->slot, GW_SLOT_TO_UP, u);
    if (u->pp_len) {
        gw_slot_add(s, u->pp, u->pp_len);
        u->pp_len = 0;
    }
    if (avail) {
        s->src_c = c;
        gw_slot_add(s, c->in + c->in_off, avail);
    }
    c->in_off = c->in_len;
    gw_client_set_deadline(c, tunnel_idle_ms(c), TMO_TUNNEL);
    gw_up_write(u, s);
}

/* Backend -> client. */
void gw_tunnel_up_bytes(gw_client_t *c, gw_upstream_t *u)
{
    if (c->closing || c->slot.busy)
        return;
    size_t avail = u->in_len - u->in_off;
    if (avail == 0) {
        if (u->in_locks == 0)
            u->in_off = u->in_len = 0;
        if (u->eof)
            tunnel_check_done(c);
        return;
    }
    if (u->in_locks == 0 && u->in_off > 0) {
        memmove(u->in, u->in + u->in_off, avail);
        u->in_len = avail;
        u->in_off = 0;
    }
    gw_wslot_t *s = gw_slot_get(&c->slot, GW_SLOT_TO_CLIENT, c);
    s->src_u = u;
    gw_slot_add(s, u->in + u->in_off, avail);
    u->in_off = u->in_len;
    gw_client_set_deadline(c, tunnel_idle_ms(c), TMO_TUNNEL);
    gw_client_write(c, s);
}

/* One side sent its FIN (or failed): deliver what it sent, then pass the
 * end on (tunnel_check_done). */
void gw_tunnel_eof(gw_client_t *c, bool from_client)
{
    if (c->up && c->up->reset) {
        gw_client_close(c);
        return;
    }
    if (from_client)
        gw_tunnel_client_bytes(c);
    else if (c->up)
        gw_tunnel_up_bytes(c, c->up);
    if (!c->closing)
        tunnel_check_done(c);
}

/* After a 101: s holds the response head; the backend's bytes after it and
 * the client's bytes after its request head are the tunnel's first. */
void gw_tunnel_begin(gw_client_t *c, gw_upstream_t *u, gw_wslot_t *s)
{
    c->state = CS_TUNNEL;
    if (u->in_len > u->in_off) {
        gw_slot_add(s, u->in + u->in_off, u->in_len - u->in_off);
        u->in_off = u->in_len;
    }
    gw_metrics_request(c->t, c);
    if (c->t->p->o.access_log)
        gw_access_log(c->t, c);
    c->logged = true;
    gw_client_write(c, s);
    gw_client_set_deadline(c, GW_TUNNEL_MS, TMO_TUNNEL);
    gw_tunnel_client_bytes(c);
    gw_client_read_update(c);
    gw_up_read_update(u);
}

static bool tcp_connect_pick(gw_client_t *c, const gw_backend_t *exclude)
{
    gw_backend_t *b =
        gw_pool_pick(c->pool, c->route->balance, c->addr, strlen(c->addr), gw_now_ms(), exclude);
    if (!b)
        return false;
    if (b == exclude) {
        gw_backend_unref(b);
        return false;
    }
    c->b = b;
    atomic_fetch_add_explicit(&b->active, 1, memory_order_relaxed);
    bool reused;
    c->up = gw_up_get(c->t, b, c, true, &reused);
    if (c->up->connected)
        gw_tunnel_connected(c);
    else
        gw_client_set_deadline(c, c->up->connect_err ? 0 : c->t->p->o.connect_timeout_ms,
                               TMO_CONNECT);
    return true;
}

/* An L4 session on an internal port: pick a backend, connect, then relay. */
void gw_tcp_session_start(gw_client_t *c, const gw_route_t *r)
{
    gw_thread_t *t = c->t;
    c->state = CS_TUNNEL;
    c->sref = t->cur;
    t->cur->users++;
    c->route = r;
    c->logged = true; /* sessions are counted, not access-logged */
    snprintf(c->log_method, sizeof(c->log_method), "TCP");
    atomic_store_explicit(&t->m.tcp_sessions,
                          atomic_load_explicit(&t->m.tcp_sessions, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    c->pool = gw_route_pool(t->cur->s, r, NULL, 0);
    if (!c->pool || c->pool->n == 0 || !tcp_connect_pick(c, NULL)) {
        log_debug("gateway", "tcp %d: no backend for %s", c->port, r->app);
        gw_client_close(c);
    }
}

void gw_tunnel_connected(gw_client_t *c)
{
    gw_client_set_deadline(c, GW_TUNNEL_MS, TMO_TUNNEL);
    gw_up_read_update(c->up);
    gw_tunnel_client_bytes(c);
    gw_client_read_update(c);
}

void gw_tcp_connect_failed(gw_client_t *c, gw_upstream_t *u, int status)
{
    gw_proxy_t *p = c->t->p;
    c->up = NULL;
    u->c = NULL;
    gw_up_close(u);
    gw_backend_t *old = c->b;
    if (old) {
        gw_backend_failed(old, gw_now_ms(), p->o.eject_base_ms, p->o.eject_max_ms);
        c->b = NULL;
        atomic_fetch_sub_explicit(&old->active, 1, memory_order_relaxed);
    }
    bool ok = false;
    if (!c->retried && old) {
        c->retried = true;
        ok = tcp_connect_pick(c, old);
    }
    if (old)
        gw_backend_unref(old);
    if (!ok)
        gw_client_close(c);
}

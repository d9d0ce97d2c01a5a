/* gateway/proxy_tcp: byte tunnels, for L4 routes on internal ports and for
 * HTTP connections after a 101 Switching Protocols (WebSocket).
 *
 * Bytes are written out of the reading side's buffer without copying; a
 * side is not read further once its buffer is full and the other side is
 * still writing the previous bytes (same locking as the HTTP path). When
 * either side ends, what it sent is delivered and then both are closed:
 * tunnelled protocols here (WebSocket, the TCP services of internal mode)
 * end sessions as a whole, so no half-closed state is kept. */
#include "gateway/proxy_internal.h"

#include "core/log.h"

#include <string.h>

static void tunnel_check_done(gw_client_t *c)
{
    gw_upstream_t *u = c->up;
    bool client_flushed = c->in_off == c->in_len && (!u || !u->slot.busy);
    bool up_flushed = !u || (u->in_off == u->in_len && !c->slot.busy);
    if ((c->peer_eof && client_flushed) || (u && u->eof && up_flushed) || !u)
        gw_client_close(c);
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
    gw_client_set_deadline(c, GW_TUNNEL_MS, TMO_TUNNEL);
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
    gw_client_set_deadline(c, GW_TUNNEL_MS, TMO_TUNNEL);
    gw_client_write(c, s);
}

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

"""HTTP server behaviour seen from outside: limits, pipelining, keep-alive."""
import socket
import time


def raw(port, data, timeout=5, read_all=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not read_all:
                break
    except socket.timeout:
        pass
    s.close()
    return out


def status_of(resp):
    return int(resp.split(b" ", 2)[1])


def test_oversized_header_block_is_431(drover):
    big = b"X-Big: " + b"a" * 20000 + b"\r\n"
    resp = raw(drover.port, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert status_of(resp) == 431
    assert b"header" in resp.lower()
    assert drover.get("/v1/status").status == 200


def test_oversized_body_is_413(drover):
    head = b"POST /v1/apps HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n"
    resp = raw(drover.port, head)
    assert status_of(resp) == 413
    # Chunked body over the limit too.
    chunk = b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
    req = b"POST /v1/apps HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
    resp = raw(drover.port, req)
    assert status_of(resp) == 413
    assert drover.get("/v1/status").status == 200


def test_garbage_and_smuggling_are_400(drover):
    assert status_of(raw(drover.port, b"HELLO\r\n\r\n")) == 400
    req = (b"POST /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert status_of(raw(drover.port, req)) == 400
    assert drover.get("/v1/kv/a").status == 404  # nothing was written


def test_pipelined_requests_answered_in_order(drover):
    drover.put("/v1/kv/p/1", "one")
    drover.put("/v1/kv/p/2", "two")
    reqs = b"".join(
        f"GET /v1/kv/p/{k} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for k in (1, 2, 1, 2))
    reqs += b"GET /v1/kv/p/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    resp = raw(drover.port, reqs)
    bodies = [part for part in (b"one", b"two") if part in resp]
    assert bodies
    order = []
    i = 0
    while True:
        a, b = resp.find(b"\r\n\r\none", i), resp.find(b"\r\n\r\ntwo", i)
        cands = [x for x in (a, b) if x >= 0]
        if not cands:
            break
        j = min(cands)
        order.append(resp[j + 4:j + 7].decode())
        i = j + 7
    assert order == ["one", "two", "one", "two", "one"]


def test_chunked_request_body(drover):
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    req = (b"PUT /v1/kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n" + body)
    assert status_of(raw(drover.port, req)) == 200
    assert drover.get("/v1/kv/chunked").body == b"hello world"


def test_keepalive_reuses_connection(drover):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", drover.port)
    for _ in range(20):
        conn.request("GET", "/v1/status")
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    conn.close()


def test_slow_client_gets_408(drover):
    s = socket.create_connection(("127.0.0.1", drover.port), timeout=20)
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # never finishes
    t0 = time.time()
    resp = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        resp += chunk
    s.close()
    assert status_of(resp) == 408
    assert time.time() - t0 < 15
    assert drover.get("/v1/status").status == 200

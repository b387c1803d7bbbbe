#!/usr/bin/env python3
# Slow clients against a banger daemon: opens N connections that send half a
# request (mode "headers": half the headers; "body": whole headers, half the
# body), checks a normal client is served meanwhile, and counts how many the
# daemon still holds open over time. Usage: slow-clients.py SOCKET N headers|body
# (docs/reliability.md, "Slow clients").
import socket, time, sys, select, resource, subprocess
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
S = sys.argv[1]; N = int(sys.argv[2]); mode = sys.argv[3]
conns = []
refused = 0
t0 = time.time()
for i in range(N):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(S)
        if mode == "headers":
            s.send(b"POST /v1/vms HTTP/1.1\r\nHost: b\r\nContent-Le")
        else:
            s.send(b"POST /v1/vms HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n{\"name\":")
    except OSError:
        refused += 1
        s.close()
        continue
    conns.append(s)
print(f"{N} half-sent requests ({mode}) in {time.time()-t0:.2f}s: {refused} closed by the server at once")
# Does a normal client get served meanwhile?
t1 = time.time()
r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", S, "http://b/v1/info"], capture_output=True, text=True)
print(f"GET /v1/info while they are held: {r.stdout} in {time.time()-t1:.2f}s")
def still_open():
    n = 0
    for s in conns:
        if s.fileno() < 0: continue
        pl = select.poll(); pl.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
        if pl.poll(0):
            try:
                d = s.recv(4096)
            except OSError:
                d = b""
            if d == b"":
                s.close(); continue
            # an answer (400) then close: drain
            continue
        n += 1
    return n
for t in [1, 5, 11, 15, 32, 35]:
    time.sleep(max(0, t - (time.time() - t0)))
    print(f"t={time.time()-t0:.0f}s: {still_open()} of {len(conns)} still open")

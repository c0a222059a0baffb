"""The bounds of ``ndfs serve`` (issue 18): slow clients cannot lock users out, each request's memory and work
are bounded by the request and the server's budgets, absurd numbers are 400s with a message.

Everything runs for real: ``ndfs serve`` children on 127.0.0.1 (``ndfs.testing.serve.served``), flooded
through raw sockets from other loopback addresses (127.0.0.2 and up, all of which reach 127.0.0.1 on Linux),
memory read from the child's /proc status (VmHWM, the kernel's own peak). No assertion is on a duration:
requests must succeed within generous timeouts, and connections must be closed by the server.
"""

import contextlib
import json
import select
import socket
import threading
import time

import numpy as np
import pytest
import requests

from ndfs.stores.local import LocalBackend
from ndfs.core.geometry import Box
from ndfs.serve.limits import MemoryBudget, RequestRefused, c_order_pieces, parse_int
from ndfs.testing.reference import build_reference_store
from ndfs.testing.serve import memory, served

TOKEN = "t-limits"
AUTH = {"Authorization": f"Token {TOKEN}"}
BIG_SHAPE = (32, 1024, 1024)  # uint8: 32 MiB, the servers' cutout cap in the memory test
MiB = 2**20


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """root/ndfs: the reference project conf/... and big/em, 32 MiB of incompressible uint8."""
    root = tmp_path_factory.mktemp("limits-store")
    build_reference_store(root / "ndfs")
    backend = LocalBackend(root / "ndfs")
    info = backend.create_volume(("big", "em"), BIG_SHAPE, "uint8", chunk_shape=(16, 256, 256))
    big = np.random.default_rng(18).integers(0, 256, BIG_SHAPE, dtype=np.uint8)
    backend.write(("big", "em"), info.levels[0].box, 0, big)
    backend.close()
    return root, big


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _closed_by_server(s: socket.socket, timeout_s: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within timeout_s, what it sent before)."""
    got = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            data = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


class Drip:
    """Sends one byte to each open socket every ``every_s`` seconds (never finishing a request) until stopped;
    a socket the server closed is noticed by the failing send."""

    def __init__(self, sockets, every_s: float = 0.25):
        self.sockets, self.every_s = list(sockets), every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.every_s):
            for s in self.sockets:
                try:
                    s.send(b"a")
                except OSError:
                    continue  # closed by the server: what the test checks afterwards, by reading it

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


# ---- A: connections and time ------------------------------------------------------------------------------
def test_a_slow_header_flood_leaves_authenticated_requests_answered_and_is_cut_off(store):
    """128 connections from 16 addresses drip header bytes, more than --max-connections: the server keeps
    accepting (evicting the longest-waiting), refuses a 9th connection per address, answers every
    authenticated request, and closes every flood connection once its header deadline passes."""
    root, _ = store
    with served("boss", root, "--token", TOKEN, "--header-timeout", "2",
                "--max-connections", "64", "--max-connections-per-address", "8") as srv:
        port = _port(srv.url)
        flood = []
        for a in range(2, 18):
            for _ in range(8):
                s = _connect(port, f"127.0.0.{a}")
                s.sendall(b"GET /v1/collection/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                flood.append(s)
        # past the per-address bound: the newest address, whose connections no eviction has reached yet
        extra = [_connect(port, "127.0.0.17") for _ in range(4)]
        refused = [_closed_by_server(s, 10) for s in extra]
        answered = []
        with Drip(flood):
            for _ in range(20):  # the authenticated user, a fresh connection each time, during the flood
                resp = requests.get(f"{srv.url}/v1/collection/", headers=AUTH, timeout=15)
                answered.append(resp.status_code)
            closed = [_closed_by_server(s, 15)[0] for s in flood]  # the deadline (2 s) passes while dripping
        assert answered == [200] * 20
        assert all(done and b"503" in got and b"too many connections" in got for done, got in refused), refused
        assert all(closed), f"{closed.count(False)} of {len(flood)} flood connections are still open"
        for s in flood + extra:
            s.close()


def test_dripped_bodies_idle_connections_and_unauthenticated_large_bodies_are_cut_off(store):
    root, _ = store
    with served("neurodata", root / "ndfs", "--token", TOKEN, "--body-timeout", "1", "--body-min-rate", "1M",
                "--idle-timeout", "2") as srv:
        port = _port(srv.url)
        # an authenticated post of 1,000 bytes sent one byte every 0.2 s would take 200 s: 408 long before
        s = _connect(port, "127.0.0.1")
        s.sendall(b"POST /nd/sd/conf/scratch/npz/0/7,11/5,9/3,7/ HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Token " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
        sent, reply = 0, b""
        while sent < 150 and not reply:
            ready, _, _ = select.select([s], [], [], 0.2)
            if ready:
                reply = s.recv(4096)
            else:
                s.send(b"\0")
                sent += 1
        assert reply.startswith(b"HTTP/1.1 408") and b"body" in reply, (sent, reply)
        assert _closed_by_server(s, 10)[0]
        # without a token, a body of 100 MB is refused as soon as the headers are in, before any byte of it
        s = _connect(port, "127.0.0.1")
        s.sendall(b"POST /nd/sd/conf/scratch/npz/0/7,11/5,9/3,7/ HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000000\r\n\r\n")
        done, got = _closed_by_server(s, 10)
        assert done and got.startswith(b"HTTP/1.1 401"), got
        # a connection that says nothing is closed after the idle timeout
        s = _connect(port, "127.0.0.1")
        assert _closed_by_server(s, 15) == (True, b"")
        assert requests.get(f"{srv.url}/nd/sd/public_tokens/", headers=AUTH, timeout=10).status_code == 200


# ---- B: memory and work bounded by the request --------------------------------------------------------------


def _maximal(protocol: str, url: str) -> tuple[str, dict, callable]:
    """(URL, headers, decode) of a cutout of all of big/em: the server's cap in this test."""
    z, y, x = BIG_SHAPE
    if protocol == "boss":
        from ndfs.stores.boss import blosc_decode

        return (f"{url}/v1/cutout/ndfs/big/em/0/0:{x}/0:{y}/0:{z}/", {"Accept": "application/blosc", **AUTH},
                lambda body: blosc_decode(body, np.uint8, BIG_SHAPE))
    if protocol == "dvid":
        repos = requests.get(f"{url}/api/repos/info", headers=AUTH, timeout=10).json()
        uuid = next(u for u, r in repos.items() if r["Alias"] == "big")
        return (f"{url}/api/node/{uuid}/em/raw/0_1_2/{x}_{y}_{z}/0_0_0", AUTH,
                lambda body: np.frombuffer(body, np.uint8).reshape(BIG_SHAPE))
    from ndfs.stores.neurodata import npz_decode

    return (f"{url}/nd/sd/big/em/npz/0/0,{x}/0,{y}/0,{z}/", AUTH, lambda body: npz_decode(body)[0])


BUDGET = 96 * MiB
SLACK = 64 * MiB  # interpreter and allocator overhead around the requests' own arrays


@pytest.mark.parametrize("protocol", ["boss", "dvid", "neurodata"])
def test_concurrent_maximal_cutouts_stay_within_the_memory_bound(store, protocol):
    """Eight concurrent cutouts at the cap (32 MiB each; BOSS answers blosc built whole, DVID and NeuroData
    stream) raise the server's peak RSS by at most --max-request-memory + 64 MiB, and every answer is exact."""
    root, big = store
    path = root if protocol == "boss" else root / "ndfs"
    with served(protocol, path, "--token", TOKEN, "--max-request-memory", str(BUDGET), "--cache-memory", "0",
                "--max-cutout-bytes", str(BIG_SHAPE[0] * BIG_SHAPE[1] * BIG_SHAPE[2])) as srv:  # the cache has
        # its own budget (--cache-memory): without it the bound here is the requests' alone
        url, headers, decode = _maximal(protocol, srv.url)
        small = url.replace("0:32/", "0:1/").replace("0,32/", "0,1/").replace("_32/", "_1/")
        assert requests.get(small, headers=headers, timeout=60).status_code == 200  # codecs loaded
        before = memory(srv.proc.pid)["VmRSS"]
        results = [None] * 8

        def fetch(i):
            resp = requests.get(url, headers=headers, timeout=300)
            results[i] = (resp.status_code, np.array_equal(decode(resp.content), big) if resp.ok else resp.text)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        peak = memory(srv.proc.pid)["VmHWM"]
    assert results == [(200, True)] * len(results), results
    assert peak - before <= BUDGET + SLACK, f"peak RSS grew {(peak - before) / MiB:.0f} MiB"


def test_a_request_larger_than_the_whole_budget_is_refused_not_run(store):
    root, _ = store
    with served("boss", root, "--token", TOKEN, "--max-request-memory", "16M") as srv:
        url, headers, _ = _maximal("boss", srv.url)  # 32 MiB of voxels and its answer: more than 16 MiB
        resp = requests.get(url, headers=headers, timeout=60)
        assert resp.status_code == 413 and "request memory" in resp.json()["message"]


@pytest.fixture(scope="module")
def servers(store):
    """One server per protocol over the reference store, with a 64 KiB scan limit."""
    root, _ = store
    with contextlib.ExitStack() as stack:
        yield {p: stack.enter_context(served(p, root if p == "boss" else root / "ndfs", "--token", TOKEN,
                                             "--max-scan-bytes", "64K"))
               for p in ("boss", "dvid", "neurodata")}


def _dvid_root(url: str) -> str:
    repos = requests.get(f"{url}/api/repos/info", headers=AUTH, timeout=10).json()
    return next(u for u, r in repos.items() if r["Alias"] == "conf")


HUGE = "9" * 5000  # past Python's own int() limit of 4300 digits
BIG = str(2**64)  # one past uint64
ABSURD = [  # (protocol, method, path (DVID: {u} is the repo's root), body, words in the answer)
    ("boss", "GET", f"/v1/cutout/ndfs/conf/em8/0/7:17/5:9/3:{HUGE}/", None, "out of range"),
    ("boss", "GET", f"/v1/cutout/ndfs/conf/em8/0/7:17/5:9/3:5/0:{HUGE}", None, "out of range"),
    ("boss", "GET", f"/v1/cutout/ndfs/conf/labels/0/7:17/5:9/3:5/?filter=5,{BIG}", None, "out of range"),
    ("boss", "GET", f"/v1/reserve/ndfs/conf/labels/{BIG}", None, "out of range"),
    ("boss", "GET", f"/v1/reserve/ndfs/conf/labels/{HUGE}", None, "out of range"),
    ("boss", "GET", f"/v1/boundingbox/ndfs/conf/labels/0/{HUGE}/", None, "out of range"),
    ("boss", "GET", "/v1/boundingbox/ndfs/conf/labels/0/5/", None, "limit"),
    ("dvid", "GET", "/api/node/{u}/em8/raw/0_1_2/" + "9" * 30 + "_1_1/0_0_0", None, "out of range"),
    ("dvid", "GET", "/api/node/{u}/em8/raw/0_1_2/1_1_1/-" + HUGE + "_0_0", None, "out of range"),
    ("dvid", "GET", "/api/node/{u}/labels/label/" + BIG + "_0_0", None, "out of range"),
    ("dvid", "GET", "/api/node/{u}/labels/raw/0_1_2/32_32_32/0_0_0?scale=" + HUGE, None, "out of range"),
    ("dvid", "GET", "/api/node/{u}/labels/labels", json.dumps([[1, 2, int(BIG)]]), "out of range"),
    ("dvid", "GET", "/api/node/{u}/labels/labels", json.dumps([[0, 0, 0]] * 100_001), "at most"),
    ("dvid", "GET", "/api/node/{u}/labels/sizes", json.dumps([5, -1]), "out of range"),
    ("dvid", "GET", "/api/node/{u}/labels/sparsevol-size/" + HUGE, None, "out of range"),
    ("dvid", "GET", "/api/node/{u}/labels/sparsevol-size/5", None, "limit"),
    ("dvid", "GET", "/api/node/{u}/labels/maxlabel", None, "limit"),
    ("dvid", "POST", "/api/node/{u}/labels/maxlabel/" + BIG, None, "out of range"),
    ("dvid", "POST", "/api/node/{u}/labels/nextlabel/" + HUGE, None, "out of range"),
    ("dvid", "GET", "/api/node/:master~" + HUGE + "/labels/info", None, "version step"),
    ("neurodata", "GET", f"/nd/sd/conf/em8/npz/0/7,{HUGE}/5,9/3,5/", None, "out of range"),
    ("neurodata", "GET", f"/nd/sd/conf/em8/npz/{HUGE}/7,17/5,9/3,5/", None, "out of range"),
    ("neurodata", "GET", f"/nd/sd/conf/labels/npz/0/7,17/5,9/3,5/filter/5,{BIG}/", None, "out of range"),
    ("neurodata", "GET", f"/nd/sd/conf/em8/id/0/7/5/{HUGE}/", None, "out of range"),
    ("neurodata", "GET", f"/nd/sd/conf/labels/reserve/{HUGE}/", None, "out of range"),
    ("neurodata", "GET", f"/nd/sd/conf/labels/{BIG}/json/", None, "out of range"),
    ("neurodata", "GET", "/nd/sd/conf/labels/" + ",".join(["5"] * 10_001) + "/json/", None, "at most"),
    ("neurodata", "GET", f"/nd/sd/conf/labels/query/status/{HUGE}/", None, "out of range"),
    ("neurodata", "GET", "/nd/sd/conf/" + ",".join(["em8"] * 300) + "/npz/0/7,17/5,9/3,5/", None, "at most"),
]


@pytest.mark.parametrize("protocol, method, path, body, words", ABSURD,
                         ids=[f"{p}-{m}-{path[:40]}" for p, m, path, _, _ in ABSURD])
def test_absurd_numbers_get_a_400_class_answer_with_a_message(servers, protocol, method, path, body, words):
    url = servers[protocol].url
    if "{u}" in path:
        path = path.replace("{u}", _dvid_root(url))
    resp = requests.request(method, url + path, data=body, headers=AUTH, timeout=60)
    assert resp.status_code in (400, 413), (resp.status_code, resp.text[:300])
    assert words in resp.text and "Traceback" not in resp.text, resp.text[:300]
    assert len(resp.text) < 2000  # the number is not echoed back whole


def test_the_servers_still_answer_right_after_every_refusal(servers, store):
    """The refusals above leave the servers serving: a cutout of each is exact."""
    from ndfs.stores.neurodata import npz_decode

    url = servers["neurodata"].url
    resp = requests.get(f"{url}/nd/sd/conf/em8/npz/0/7,17/5,9/3,5/", headers=AUTH, timeout=10)
    root, _ = store
    expected = LocalBackend(root / "ndfs").read(("conf", "em8"), Box((3, 5, 7), (5, 9, 17)), 0)
    np.testing.assert_array_equal(npz_decode(resp.content)[0], expected)
    assert requests.get(f"{servers['boss'].url}/v1/collection/", headers=AUTH, timeout=10).status_code == 200
    assert requests.get(f"{servers['dvid'].url}/api/repos/info", headers=AUTH, timeout=10).status_code == 200


# ---- the pieces, on their own --------------------------------------------------------------------------------
@pytest.mark.parametrize("box, limit", [(Box((2, 3, 4), (7, 11, 30)), 10_000), (Box((0, 0, 0), (3, 5, 40)), 100),
                                        (Box((0, 0, 0), (2, 3, 50)), 24), (Box((1, 1, 1), (2, 2, 2)), 1)])
def test_c_order_pieces_concatenate_to_the_box_in_c_order(box, limit):
    a = np.arange(int(np.prod(box.stop)), dtype=np.uint16).reshape(box.stop)
    pieces = list(c_order_pieces(box, 2, limit))
    assert all(p.size * 2 <= max(limit, 2) for p in pieces)
    joined = b"".join(a[p.slices()].tobytes() for p in pieces)
    assert joined == a[box.slices()].tobytes()


def test_parse_int_takes_plain_decimals_within_range_only():
    assert parse_int("0", "n") == 0 and parse_int("18446744073709551615", "n") == 2**64 - 1
    assert parse_int("-5", "n", -10, 10) == -5 and parse_int("007", "n") == 7
    for text in ["", "+5", "5 ", "1_000", "٣", "0x10", "1e3", "18446744073709551616", HUGE, "-1"]:
        with pytest.raises(RequestRefused) as caught:
            parse_int(text, "n")
        assert caught.value.status == 400 and len(str(caught.value)) < 200


def test_the_memory_budget_waits_refuses_and_gives_back():
    budget = MemoryBudget(100 * MiB, slots=2, wait_s=0.5, small_bytes=MiB)
    with budget.hold(10):  # small: free, takes no slot
        assert budget.held == 0
    first = budget.hold(60 * MiB)
    second = budget.hold(30 * MiB)
    with pytest.raises(RequestRefused) as caught:  # both slots taken
        budget.hold(5 * MiB)
    assert caught.value.status == 503
    second.release()
    with pytest.raises(RequestRefused, match="waited"):  # 60 + 50 > 100: waits, then gives up
        budget.hold(50 * MiB)
    answer = first.keep([b"x" * (3 * MiB)])
    assert sum(map(len, answer)) == 3 * MiB and budget.held == 60 * MiB  # held until the answer is closed
    answer.close()
    answer.close()
    assert budget.held == 0 and budget.peak == 90 * MiB

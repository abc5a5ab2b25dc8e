"""Tag polling cost: HTTP requests (and time) per poll with 2,000 tags.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_tags.py [--tags 2000] [--vms 200]
        [--polls 4] [--before-rev 819a8fa]

The simulator holds `--vms` VMs and `--tags` tags in 20 categories, every tag attached to
one VM (round robin): the worst case for a cache of attached tags, since all of them are
in use. A counting HTTP proxy stands between the client and the simulator; each poll is
one `TagClient.vm_tags()` as the watcher calls it every `daemon.tag_interval` (60 s by
default). The first poll starts cold (login included); the later ones are the steady
state. With `--before-rev`, the same polls run with the TagClient of that git revision
(the seed's: every category and tag read on every poll). Writes bench/results/tags.json.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = 20
MARK = "/__bench_mark"


async def child(proxy_url: str, user: str, password: str, vms: list[str], polls: int) -> None:
    """Polls with whatever `watcher.tags` is on the path; a mark between polls."""
    from watcher.soap import Endpoint
    from watcher.tags import TagClient

    client = TagClient(Endpoint(proxy_url + "/sdk"), user, password)
    takes_vms = "vm_morefs" in inspect.signature(client.vm_tags).parameters
    times: list[float] = []
    tagged = 0
    try:
        for _ in range(polls):
            t0 = time.perf_counter()
            got = await (client.vm_tags(vms) if takes_vms else client.vm_tags())
            times.append(time.perf_counter() - t0)
            tagged = len(got)
            await asyncio.to_thread(urllib.request.urlopen, proxy_url + MARK)
    finally:
        await client.close()
    print(json.dumps({"poll_s": times, "tagged_vms": tagged, "batch": takes_vms}))


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.log: list[str] = []
        self.url = ""

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._http.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.log.append(request.path)
        if request.path == MARK:
            return web.Response(text="ok")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "vmware-api-session-id", "content-type")
        }
        async with self._http.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as r:
            out = web.Response(status=r.status, body=await r.read())
            out.headers["Content-Type"] = r.headers.get("Content-Type", "application/json")
            return out

    def per_poll(self, since: int) -> list[int]:
        counts, n = [], 0
        for path in self.log[since:]:
            if path == MARK:
                counts.append(n)
                n = 0
            else:
                n += 1
        return counts


async def setup(sim: object, tags: int) -> list[str]:
    from watcher.inventory import read_inventory
    from watcher.session import Credentials, Session
    from watcher.soap import Endpoint
    from watcher.tags import TagClient

    async with Session(Endpoint(sim.url), Credentials(sim.user, sim.password)) as s:  # type: ignore[attr-defined]
        vms = sorted(vm.moref for vm in (await read_inventory(s)).vms())
    admin = TagClient(Endpoint(sim.url), sim.user, sim.password)  # type: ignore[attr-defined]
    sem = asyncio.Semaphore(8)
    try:
        cats = [await admin.create_category(f"cat{c}") for c in range(CATEGORIES)]

        async def one(i: int) -> None:
            async with sem:
                tag = await admin.create_tag(cats[i % CATEGORIES], f"tag{i}")
                await admin.attach(tag, vms[i % len(vms)])

        await asyncio.gather(*(one(i) for i in range(tags)))
    finally:
        await admin.close()
    return vms


def extract_rev(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def measure(sim: object, code: Path, vms_file: Path, polls: int) -> dict[str, object]:
    proxy = CountingProxy(sim.url.rsplit("/sdk", 1)[0])  # type: ignore[attr-defined]
    await proxy.start()
    try:
        cmd = [sys.executable, __file__, "--child", proxy.url, sim.user, sim.password]  # type: ignore[attr-defined]
        cmd += [str(vms_file), str(polls)]
        env = dict(os.environ, PYTHONPATH=str(code))
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"child exit {proc.returncode}: {err.decode()[-2000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        counts = proxy.per_poll(0)
    finally:
        await proxy.stop()
    return {
        "requests_per_poll": counts,
        "steady_requests_per_poll": statistics.median(counts[1:]) if len(counts) > 1 else None,
        "poll_s": result["poll_s"],
        "steady_poll_s": statistics.median(result["poll_s"][1:]) if polls > 1 else None,
        "tagged_vms": result["tagged_vms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=2000)
    ap.add_argument("--vms", type=int, default=200)
    ap.add_argument("--polls", type=int, default=4)
    ap.add_argument("--before-rev", default="")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        url, user, password, vms_file, polls = args.child
        vms = json.loads(Path(vms_file).read_text())
        asyncio.run(child(url, user, password, vms, int(polls)))
        return
    sys.path.insert(0, str(ROOT))
    from protector.devtools.simulator import Simulator

    sim_args = ["-cluster", "2", "-host", "1", "-standalone-host", "0", "-pool", "0"]
    sim_args += ["-vm", str(max(1, args.vms // 2))]
    results: dict[str, object] = {"sim_args": sim_args, "tags": args.tags}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-tags-") as tmp_name:
        tmp = Path(tmp_name)
        with Simulator(args=sim_args) as sim:
            t0 = time.perf_counter()
            vms = asyncio.run(setup(sim, args.tags))
            print(f"{args.tags} tags on {len(vms)} VMs set up in {time.perf_counter() - t0:.0f} s")
            vms_file = tmp / "vms.json"
            vms_file.write_text(json.dumps(vms))
            results["vms"] = len(vms)
            results["after"] = asyncio.run(measure(sim, ROOT, vms_file, args.polls))
            print(f"after:  {results['after']}", flush=True)
            if args.before_rev:
                (tmp / "before").mkdir()
                before = extract_rev(args.before_rev, tmp / "before")
                results["before_rev"] = args.before_rev
                results["before"] = asyncio.run(measure(sim, before, vms_file, args.polls))
                print(f"before: {results['before']}", flush=True)
    after = results["after"]
    print(
        f"requests per poll at {args.tags} tags: steady {after['steady_requests_per_poll']}"  # type: ignore[index]
        f" (first poll {after['requests_per_poll'][0]})"  # type: ignore[index]
    )
    if "before" in results:
        b = results["before"]
        print(
            f"before ({args.before_rev}): steady {b['steady_requests_per_poll']}"  # type: ignore[index]
            f" (first poll {b['requests_per_poll'][0]})"  # type: ignore[index]
        )
    out = ROOT / "bench" / "results" / "tags.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(UTC).isoformat(), **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

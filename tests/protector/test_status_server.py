"""The status HTTP server: loopback, bearer token, health, metrics, HTML and JSON."""

from __future__ import annotations

import aiohttp

from protector.daemon.metrics import Metrics
from protector.daemon.status_server import StatusServer

STATUS = {
    "generated_at": "2026-11-25T12:00:00+00:00",
    "vcenter": "https://vc.example.com/sdk",
    "healthy": True,
    "counts": {"ok": 1, "breached": 1},
    "vms": [
        {
            "path": "/DC0/vm/prod/web-1",
            "state": "ok",
            "policy": "gold",
            "newest_point": "p1",
            "age_seconds": 7200.0,
            "age_text": "2h",
            "rpo_seconds": 86400.0,
            "rpo_text": "24h",
            "last_error": "",
        },
        {
            "path": "/DC0/vm/prod/web-2",
            "state": "due",
            "policy": "gold",
            "newest_point": "p2",
            "age_seconds": 82800.0,
            "age_text": "23h",
            "rpo_seconds": 86400.0,
            "rpo_text": "24h",
            "last_error": "",
        },
        {
            "path": "/DC0/vm/prod/db-<1>",
            "state": "breached",
            "policy": "gold",
            "newest_point": None,
            "age_seconds": None,
            "age_text": "",
            "rpo_seconds": 86400.0,
            "rpo_text": "24h",
            "last_error": "boom",
        },
        {
            "path": "/DC0/vm/prod/app-1",
            "state": "failing",
            "breached": True,
            "policy": "gold",
            "newest_point": None,
            "age_text": "",
            "rpo_text": "24h",
            "last_error": "datastore unreachable",
        },
    ],
    "jobs": {
        "running": [{"vm_name": "db-2", "reason": "RPO due", "outcome": "running", "error": ""}],
        "queued": [{"vm_name": "db-3", "reason": "no restore point yet", "state": "queued"}],
        "recent": [{"vm_name": "web-1", "reason": "RPO due", "outcome": "success", "error": ""}],
    },
    "errors": ["app-1: backup attempt 3 failed: datastore unreachable"],
    "prune": {
        "at": "2026-11-25T07:00:00+00:00",
        "outcome": "done",
        "points_deleted": 3,
        "chunks_deleted": 40,
        "sweep_deferred": "backups are running (could not take the exclusive lock)",
    },
    "dispatch_paused": None,
    "policy_errors": ['prod.toml:3: policy "gold": select.nmes: unknown key'],
}


async def test_token_health_metrics_and_pages():
    metrics = Metrics()
    metrics.jobs.labels("success").inc(3)
    health = {"ok": True}
    srv = StatusServer(lambda: STATUS, lambda: health["ok"], metrics, token="s3cret")
    await srv.start("127.0.0.1:0")
    base = f"http://127.0.0.1:{srv.port}"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/status.json") as r:
                assert r.status == 401
            async with http.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            # Liveness says only ok/unhealthy: probes (systemd, load balancers) need no token.
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200 and await r.text() == "ok\n"
            async with http.get(f"{base}/healthz", headers=auth) as r:
                assert r.status == 200
            health["ok"] = False
            async with http.get(f"{base}/healthz", headers=auth) as r:
                assert r.status == 503
            async with http.get(f"{base}/metrics", headers=auth) as r:
                text = await r.text()
                assert 'vigil_jobs_total{outcome="success"} 3.0' in text
            async with http.get(f"{base}/status.json", headers=auth) as r:
                assert (await r.json())["counts"] == {"ok": 1, "breached": 1}
            async with http.get(f"{base}/status", headers=auth) as r:
                page = await r.text()
                assert "/DC0/vm/prod/web-1" in page
                assert "db-&lt;1&gt;" in page, "names are escaped"
                assert "select.nmes: unknown key" in page
                assert "last good policies still in force" in page
                app = page[page.index("app-1") :].split("</tr>")[0]
                assert "failing" in app and "RPO breached" in app, app
                assert "datastore unreachable" in app
                assert "chunk sweep deferred: backups are running" in page
                assert "<h2>Recent errors</h2><ul><li>app-1: backup attempt 3 failed" in page
                jobs = page[page.index("Running and queued jobs (1 running, 1 queued)") :]
                jobs = jobs[: jobs.index("</table>")]
                assert "db-2" in jobs and "RPO due" in jobs and "running" in jobs
                assert "db-3" in jobs and "queued" in jobs
                assert "web-1" not in jobs, "finished jobs are listed apart"
                assert age_cell(page, "web-1") == ("#1a7f37", "2h"), "within the RPO: green"
                assert age_cell(page, "web-2") == ("#9a6700", "23h"), "last tenth: amber"
                assert age_cell(page, "db-&lt;1&gt;") == ("#cf222e", "none"), "no point: red"
    finally:
        await srv.stop()


def age_cell(page: str, vm: str) -> tuple[str, str]:
    """(colour, text) of the age column in a VM's row of the status page."""
    row = page[page.index(f"<td>/DC0/vm/prod/{vm}</td>") :].split("</tr>")[0]
    cell = row[row.index("class='age'") :]
    colour = cell.split("color:")[1].split(";")[0]
    return colour, cell.split(">")[1].split("<")[0]


async def test_status_is_paged_filtered_and_problems_first():
    vms = [
        {"path": f"/DC0/vm/vm-{i:05}", "state": "ok", "policy": "gold", "why": ""}
        for i in range(2_500)
    ]
    vms[2_400] = {**vms[2_400], "state": "failing", "last_error": "no datastore"}
    status = {**STATUS, "vms": vms, "counts": {"ok": 2_499, "failing": 1}}
    srv = StatusServer(lambda: status, lambda: True, Metrics())
    await srv.start("127.0.0.1:0")
    base = f"http://127.0.0.1:{srv.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/status.json") as r:
                body = await r.json()
            assert len(body["vms"]) == 100 and body["vms"][0]["path"].endswith("02400")
            assert body["vms_page"]["pages"] == 25 and body["counts"]["ok"] == 2_499
            async with http.get(f"{base}/status.json?page=3&per_page=50&q=vm-01") as r:
                body = await r.json()
            assert body["vms_page"] == {
                "page": 3,
                "pages": 20,
                "per_page": 50,
                "matching": 1000,
                "total": 2500,
                "state": "",
                "q": "vm-01",
            }
            assert body["vms"][0]["path"] == "/DC0/vm/vm-01100"
            async with http.get(f"{base}/status.json?per_page=all") as r:
                assert len((await r.json())["vms"]) == 2_500, "scripts can still have all"
            async with http.get(f"{base}/status?state=failing") as r:
                page = await r.text()
            assert page.count("<tr><td>/DC0/vm/") == 1 and "no datastore" in page
            async with http.get(f"{base}/status?page=2&q=vm") as r:
                page = await r.text()
            assert page.count("<tr><td>/DC0/vm/") == 100, "never every VM on one page"
            assert "href='?page=3&amp;q=vm'" in page and "href='?page=1&amp;q=vm'" in page
    finally:
        await srv.stop()

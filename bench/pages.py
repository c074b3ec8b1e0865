"""Page weight and server time of every kind of page, crawled with real demo data.

Signs in as each role, follows every same-site link from the home page (a few per route),
and prints for each route the largest page: HTML + its CSS and JS, gzipped as served, and
the server time. The budget is 40 KB gzipped per page in all; an htmx fragment a few KB.

    python -m bench.pages [--database-url URL] [--per-route 3]
"""
from __future__ import annotations

import argparse
import gzip
import re
import statistics
import time
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import urlsplit

from bench.setup import demo_app

BUDGET = 40 * 1024
SKIP = re.compile(r"/(logout|export|download|template)|\.(csv|xlsx)$|/static/")
ROLES = {"admin": "admin@example.org", "program_manager": "manager@example.org",
         "field_officer": "officer@example.org", "viewer": "viewer@example.org"}


def _body(response) -> bytes:
    data = response.get_data()
    return data if response.headers.get("Content-Encoding") == "gzip" else gzip.compress(data)


def crawl(app, email: str, password: str, per_route: int) -> dict[str, dict]:
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    adapter = app.url_map.bind("localhost")
    seen, per_endpoint = set(), defaultdict(int)
    results: dict[str, dict] = {}
    asset_sizes: dict[str, int] = {}
    queue = deque(["/"])
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        try:
            endpoint, _ = adapter.match(urlsplit(url).path)
        except Exception:
            continue
        if per_endpoint[endpoint] >= per_route:
            continue
        per_endpoint[endpoint] += 1
        started = time.perf_counter()
        response = client.get(url, headers={"Accept-Encoding": "gzip"})
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200 or "text/html" not in response.content_type:
            continue
        compressed = _body(response)
        html = gzip.decompress(compressed).decode()
        total = len(compressed)
        for asset in set(re.findall(r'(?:href|src)="(/static/[^"]+)"', html)):
            if asset not in asset_sizes:
                asset_sizes[asset] = len(_body(client.get(asset, headers={"Accept-Encoding": "gzip"})))
            total += asset_sizes[asset]
        fragment = client.get(url, headers={"Accept-Encoding": "gzip", "HX-Request": "true"})
        best = results.get(endpoint)
        if best is None or total > best["total"]:
            results[endpoint] = {"url": url, "total": total, "html": len(compressed),
                                 "fragment": len(_body(fragment)), "ms": elapsed}
        for link in re.findall(r'href="(/[^"#]*)"', html):
            link = link.replace("&amp;", "&")
            if not SKIP.search(link) and link not in seen:
                queue.append(link)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--per-route", type=int, default=3)
    args = parser.parse_args(argv)
    app = demo_app(args.database_url or f"sqlite:///{Path('instance/bench/pages.db').resolve()}")
    over = 0
    for role, email in ROLES.items():
        with app.app_context():
            results = crawl(app, email, "demo-password" if role != "admin" else "admin-password",
                            args.per_route)
        print(f"\n== {role}: {len(results)} routes")
        print(f"{'route':45} {'page+assets':>11} {'html':>6} {'fragment':>8} {'server ms':>9}")
        for endpoint, r in sorted(results.items(), key=lambda kv: -kv[1]["total"]):
            flag = "  OVER BUDGET" if r["total"] > BUDGET else ""
            over += r["total"] > BUDGET
            print(f"{endpoint:45} {r['total'] / 1024:9.1f}KB {r['html'] / 1024:5.1f}K "
                  f"{r['fragment'] / 1024:7.1f}K {r['ms']:9.1f}{flag}")
        if results:
            print(f"median server time {statistics.median(r['ms'] for r in results.values()):.1f} ms")
    print(f"\n{over} page(s) over the {BUDGET // 1024} KB budget")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())

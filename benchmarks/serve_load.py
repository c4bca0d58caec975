"""Load and acceptance run of the search service (`lit serve`), printed as JSON.

Starts `lit serve INDEX --port 0` (the real command, on 127.0.0.1), then:

1. checks: each of a few indexed photos, uploaded, is its own rank-1 result; the API's result
   for one photo is identical to `lit search --json`'s; a text query returns results; a
   photo added through the API (one the index does not hold) is its own top hit on the next
   request and gone after DELETE; a garbage upload gets a 4xx JSON error;
2. optionally (--figures DIR) drives the page in headless Chromium and saves screenshots;
3. load: for each number of clients (default 1, 4, 8, 16), that many threads send image
   and text queries (alternating; each image query a new upload, so the model runs) for
   --seconds, then drain; throughput, p50/p95/p99
   latency (all, image, text) and errors (must be 0); during the largest level, another
   thread adds --adds held-out photos (each its own top hit afterwards) and deletes them.

Usage:
    lit extract PHOTOS --out f.h5 && lit index f.h5 --out i.h5
    python benchmarks/serve_load.py i.h5 --held-out OTHER_PHOTOS --figures figures/
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TEXTS = ["a church", "a bridge over a river", "a palace at night", "a tower", "a statue", "a building with columns",
         "a submarine", "a fountain", "a stadium", "a castle"]


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats(lat):
    return {"n": len(lat), "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "p99_s": percentile(lat, 99),
            "mean_s": statistics.fmean(lat) if lat else None}


def start_server(index, extra, env):
    proc = subprocess.Popen([sys.executable, "-m", "lit", "serve", str(index), "--port", "0", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise SystemExit("lit serve exited: " + "".join(lines))
            continue
        lines.append(line)
        m = re.search(r"serving (http://\S+?)/ ", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep the pipe drained
            return proc, m.group(1), "".join(lines)
    proc.kill()
    raise SystemExit("lit serve did not start: " + "".join(lines))


def search_image(client, path, topk=10, name=None, fresh=False):
    """Search with the photo at ``path``; ``fresh``: with random bytes after its end, which
    decoders ignore but which make it a new upload for the service's cache (so the model runs)."""
    data = path.read_bytes() + (os.urandom(16) if fresh else b"")
    return client.post("/api/search", files={"image": (name or path.name, data, "image/jpeg")}, data={"topk": str(topk)})


def checks(client, index, photos, held_out, env, work):
    out = {}
    root = Path(client.get("/api/health").json()["index"]).parent
    # 1. indexed photos, uploaded, come back at rank 1
    ranks = {}
    for name, path in photos[:5]:
        res = search_image(client, path).json()
        names = [r["name"] for r in res["results"]]
        ranks[name] = names.index(name) + 1 if name in names else None
    out["indexed_photo_rank"] = ranks
    out["indexed_photos_at_rank_1"] = sum(r == 1 for r in ranks.values())
    # 2. the same query through `lit search`
    name, path = photos[0]
    cli_json = work / "cli.json"
    subprocess.run([sys.executable, "-m", "lit", "search", str(index), str(path), "--topk", "10", "--json", str(cli_json)],
                   check=True, env=env, capture_output=True)
    cli = json.loads(cli_json.read_text())["queries"][0]["results"]
    api = search_image(client, path).json()["results"]
    out["same_as_lit_search"] = ([r["name"] for r in cli] == [r["name"] for r in api]
                                 and all(abs(a["score"] - b["score"]) <= 1e-6 * max(1, abs(a["score"])) for a, b in zip(cli, api)))
    # 3. text
    text = client.post("/api/search", data={"text": "a church", "topk": "5"})
    out["text_query"] = {"status": text.status_code, "results": [r["name"] for r in text.json().get("results", [])]}
    # 4. add, find, delete
    if held_out:
        p = held_out[0]
        add = client.post("/api/images", files={"image": (p.name, p.read_bytes(), "image/jpeg")},
                          data={"name": f"added/{p.name}"})
        top = search_image(client, p).json()["results"]
        client.delete(f"/api/images/added/{p.name}")
        after = search_image(client, p).json()["results"]
        out["added_photo"] = {"add_status": add.status_code, "top_hit": top[0]["name"] if top else None,
                              "is_own_top_hit": bool(top) and top[0]["name"] == f"added/{p.name}",
                              "gone_after_delete": f"added/{p.name}" not in [r["name"] for r in after]}
    # 5. garbage
    bad = client.post("/api/search", files={"image": ("x.jpg", b"garbage" * 100, "image/jpeg")})
    out["garbage_upload"] = {"status": bad.status_code, "error": bad.json().get("error")}
    del root
    return out


def screenshots(url, photos, folder):
    """Drive the page in headless Chromium; save the results grid and a match view."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    try:
        wait = WebDriverWait(driver, 300)
        driver.get(url + "/")
        wait.until(lambda d: "indexed" in d.find_element(By.ID, "stats").text)
        for name, path in photos[:10]:  # a query with a same-scene result that has matches to draw
            driver.find_element(By.ID, "file-input").send_keys(str(path))
            wait.until(lambda d, n=path.name: d.find_element(By.ID, "query-name").text == n and
                       d.find_elements(By.CSS_SELECTOR, ".card"))
            cards = driver.find_elements(By.CSS_SELECTOR, ".card")
            names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards]
            scene = name.split("/")[0]
            same = [i for i, n in enumerate(names[:5]) if n != name and n.split("/")[0] == scene]
            if not same:
                continue
            cards[same[0]].click()
            wait.until(lambda d: "matching super-feature" in d.find_element(By.ID, "viewer-meta").text
                       or "no pair" in d.find_element(By.ID, "viewer-meta").text)
            found = driver.execute_script("return state.viewer.match.matches.length")
            driver.find_element(By.ID, "close").click()
            if found:
                break
        out["page_query"], out["page_first_result"], out["page_matches"] = name, names[0], found
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                                 for i in d.find_elements(By.CSS_SELECTOR, ".card img")[:10]))
        driver.save_screenshot(str(folder / "serve_results.png"))
        cards[same[0]].click()
        wait.until(lambda d: "matching super-feature" in d.find_element(By.ID, "viewer-meta").text
                   or "no pair" in d.find_element(By.ID, "viewer-meta").text)
        canvas = driver.find_element(By.ID, "canvas")
        pts = driver.execute_script("return state.viewer.points || []")
        if pts:
            driver.execute_script(
                "const r = arguments[0].getBoundingClientRect();"
                "arguments[0].dispatchEvent(new MouseEvent('click', {clientX: r.left + arguments[1], clientY: r.top + arguments[2]}));",
                canvas, pts[0][0], pts[0][1])
            wait.until(lambda d: "attention maps" in d.find_element(By.ID, "viewer-meta").text)
        time.sleep(0.5)
        driver.save_screenshot(str(folder / "serve_match.png"))
        out["page_match_view"] = driver.find_element(By.ID, "viewer-meta").text
        out["screenshots"] = [str(folder / "serve_results.png"), str(folder / "serve_match.png")]
    finally:
        driver.quit()
    return out


def load(url, photos, clients, seconds, adds=None):
    lat = {"image": [], "text": []}
    errors, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed):
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=600) as c:
            i = 0
            while time.monotonic() < deadline:
                kind = "image" if (i + seed) % 2 == 0 else "text"
                t = time.perf_counter()
                try:
                    if kind == "image":
                        res = search_image(c, rng.choice(photos)[1], fresh=True)
                    else:
                        res = c.post("/api/search", data={"text": rng.choice(TEXTS), "topk": "10"})
                    ok = res.status_code == 200 and res.json()["results"]
                except httpx.HTTPError as err:
                    ok, res = False, err
                dt = time.perf_counter() - t
                with lock:
                    if ok:
                        lat[kind].append(dt)
                    else:
                        errors.append(str(getattr(res, "text", res))[:200])
                i += 1

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    add_report = adds() if adds else None
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    n = len(lat["image"]) + len(lat["text"])
    return {"clients": clients, "seconds": round(wall, 1), "requests": n, "throughput_rps": n / wall,
            "errors": len(errors), "error_samples": errors[:3], "all": stats(lat["image"] + lat["text"]),
            "image": stats(lat["image"]), "text": stats(lat["text"]), "adds": add_report}


def adds_during_load(url, held_out):
    def run():
        out = {"added": 0, "own_top_hit": 0, "deleted": 0, "add_latency_s": [], "errors": []}
        with httpx.Client(base_url=url, timeout=600) as c:
            for p in held_out:
                name = f"during-load/{p.name}"
                t = time.perf_counter()
                res = c.post("/api/images", files={"image": (p.name, p.read_bytes(), "image/jpeg")}, data={"name": name})
                out["add_latency_s"].append(round(time.perf_counter() - t, 2))
                if res.status_code != 201:
                    out["errors"].append(res.text[:200])
                    continue
                out["added"] += 1
                top = search_image(c, p, topk=1).json()["results"]
                out["own_top_hit"] += bool(top) and top[0]["name"] == name
            for p in held_out:
                out["deleted"] += c.delete(f"/api/images/during-load/{p.name}").status_code == 200
        return out

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", help="an index made by `lit extract` + `lit index` (copied first: the run adds and deletes)")
    ap.add_argument("--held-out", help="folder of photos the index does not hold (added during the run)")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--seconds", type=float, default=30, help="query time per level (then in-flight requests finish)")
    ap.add_argument("--adds", type=int, default=3, help="held-out photos added during the largest level")
    ap.add_argument("--figures", help="save screenshots of the page (headless Chromium) in this folder")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    index = work / Path(args.index).name
    shutil.copyfile(args.index, index)
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc, url, banner = start_server(index, ["--device", args.device, "--upload-dir", str(work / "uploads")], env)
    startup = time.perf_counter() - t0
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            health = client.get("/api/health").json()
            root = Path(json.loads(subprocess.run(
                [sys.executable, "-c", f"import json, lit.index_file as f; print(json.dumps(f.read_info({str(index)!r}).image_root))"],
                capture_output=True, text=True, env=env, check=True).stdout))
            names = client.get("/api/images", params={"limit": 10000}).json()["names"]
            rng = random.Random(0)
            photos = [(n, root / n) for n in rng.sample(names, min(len(names), 20))]
            held = sorted(p for p in Path(args.held_out).rglob("*") if p.suffix.lower() in IMAGE_EXT) if args.held_out else []
            result = {"index": str(args.index), "images": health["images"], "model": health["model"],
                      "startup_s": round(startup, 1), "cpu_count": os.cpu_count(), "device": args.device,
                      "checks": checks(client, index, photos, held, env, work)}
        if args.figures:
            try:
                result["page"] = screenshots(url, photos, Path(args.figures))
            except Exception as err:  # report, go on with the load
                result["page"] = {"error": f"{type(err).__name__}: {err}"}
        levels = [int(c) for c in args.clients.split(",") if int(c) > 0]  # --clients 0: no load
        result["load"] = []
        for n in levels:
            adds = adds_during_load(url, held[1:1 + args.adds]) if n == max(levels) and len(held) > 1 else None
            result["load"].append(load(url, photos, n, args.seconds, adds))
            print(json.dumps(result["load"][-1]), file=sys.stderr, flush=True)
        result["errors_total"] = sum(level["errors"] for level in result["load"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        result_exit = proc.returncode
        shutil.rmtree(work, ignore_errors=True)
    result["server_exit_status"] = result_exit
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

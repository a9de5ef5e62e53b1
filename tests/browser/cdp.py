#!/usr/bin/env python3
"""Loads one page in headless Chromium over the DevTools protocol and reports.

    python3 tests/browser/cdp.py URL SCREENSHOT.png [WIDTH HEIGHT]

Prints one JSON document on stdout:
  {"problems": [...], "title": "...", "html": "<html>...", "status": 200}
`problems` holds every console message of level warning or error, every
uncaught exception, and every browser log entry of level warning or error
(failed loads, Content-Security-Policy violations, mixed content...).

Talks to Chromium over --remote-debugging-pipe (file descriptors 3 and 4,
NUL-separated JSON messages): no port, no extra package, nothing but the
Python standard library and Debian's chromium. Chromium runs with the flags
this machine needs (README of the test command; no sandbox as root, no
GPU, no background networking) and a fresh profile that is removed after.
Exits 1 with a message on stderr when the page cannot be loaded or the
browser misbehaves; never hangs past its deadline.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

DEADLINE = 60.0


def main():
    url, shot = sys.argv[1], sys.argv[2]
    width, height = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (1280, 900)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        sys.exit("chromium is not installed (tests/run.sh installs Debian's chromium)")
    profile = tempfile.mkdtemp(prefix="cdp-profile-")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def child_fds():
        # Chromium reads commands on fd 3 and writes answers on fd 4. dup
        # first: one of the pipe ends may already be 3 or 4, and dup2 onto
        # itself would leave it close-on-exec.
        r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)
        os.dup2(r, 3)
        os.dup2(w, 4)

    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--user-data-dir={profile}", f"--window-size={width},{height}",
         "--remote-debugging-pipe", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(None if os.environ.get("CDP_DEBUG") else subprocess.DEVNULL),
        preexec_fn=child_fds, close_fds=False)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    out = os.fdopen(to_chrome_w, "wb", buffering=0)
    inp = os.fdopen(from_chrome_r, "rb", buffering=0)
    start = time.monotonic()
    buf = b""
    events = []
    next_id = [0]

    def read_message():
        nonlocal buf
        while b"\0" not in buf:
            if time.monotonic() - start > DEADLINE:
                raise TimeoutError("no answer from chromium within the deadline")
            chunk = inp.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            buf += chunk
        msg, buf = buf.split(b"\0", 1)
        return json.loads(msg)

    def send(method, params=None, session=None):
        next_id[0] += 1
        msg = {"id": next_id[0], "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        out.write(json.dumps(msg).encode() + b"\0")
        while True:
            m = read_message()
            if m.get("id") == next_id[0]:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            events.append(m)

    def wait_event(name, session):
        for i, m in enumerate(events):
            if m.get("method") == name and m.get("sessionId") == session:
                return events.pop(i)
        while True:
            m = read_message()
            if m.get("method") == name and m.get("sessionId") == session:
                return m
            events.append(m)

    try:
        target = send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            send(f"{domain}.enable", session=session)
        nav = send("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            raise RuntimeError(f"navigation failed: {nav['errorText']}")
        wait_event("Page.loadEventFired", session)
        # Let late console messages and log entries arrive.
        send("Runtime.evaluate", {"expression": "new Promise(r => setTimeout(r, 300))",
                                  "awaitPromise": True}, session=session)
        html = send("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                         "returnByValue": True}, session=session)["result"]["value"]
        title = send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                     session=session)["result"]["value"]
        full = send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                         "returnByValue": True}, session=session)["result"]["value"]
        send("Emulation.setDeviceMetricsOverride",
             {"width": width, "height": max(height, int(full)), "deviceScaleFactor": 1, "mobile": False},
             session=session)
        png = send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                   session=session)["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
        problems = []
        status = None
        for m in events:
            method, p = m.get("method"), m.get("params", {})
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                problems.append(f"console.{p['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                problems.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                e = p["entry"]
                problems.append(f"{e['source']} {e['level']}: {e['text']} {e.get('url', '')}".strip())
            elif method == "Network.responseReceived" and p.get("type") == "Document" and status is None:
                status = p["response"]["status"]
            elif method == "Network.loadingFailed":
                problems.append(f"network: {p.get('errorText')} ({p.get('type')})")
        json.dump({"problems": problems, "title": title, "html": html, "status": status}, sys.stdout)
        try:
            send("Browser.close")
        except Exception:
            pass
    except Exception as e:  # reported, never a hang
        print(f"cdp.py: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Opens a self-contained HTML page in headless Chromium, as a phone would see
it, and checks that it renders cleanly.

Usage:
    check_page.py --html PATH --screenshot OUT.png [--chromium BIN]
                  [--width 390 --height 844] [--chart-selector 'svg.chart']
                  [--timeout 60]

Chromium is driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: the browser reads JSON messages on fd 3 and writes
them on fd 4, each ended by a NUL byte). The page is loaded from file:// into
a fresh target with the device metrics of a phone (--width x --height CSS
pixels, mobile, device scale factor 2), and the script records:

  * errors: uncaught exceptions, console.error and console.assert calls, log
    entries at level error (CSP violations among them), failed loads, and
    every request for a URL that is neither file: nor data: ("fetched from
    outside: URL"; such requests are also blocked, so that the check never
    reaches the network);
  * for each element matching --chart-selector: its id (or its index when it
    has none), its rendered width and height, and how many drawn elements
    (path, rect, line, polyline, circle, text) it contains;
  * the document's title, its number of <table> elements, and whether it
    scrolls horizontally at this width: its scrollWidth against the layout
    viewport (documentElement.clientWidth). window.innerWidth alone would
    not tell, as mobile Chromium zooms a too-wide page out until it fits and
    innerWidth grows with it;
  * a full-page PNG screenshot, written to --screenshot.

It prints one JSON object on stdout: {"title", "errors", "charts": [{"id",
"index", "width", "height", "drawn"}], "tables", "horizontal_scroll",
"scroll_width", "viewport_width", "screenshot", "problems", "seconds"}, and
exits 0 when there are no errors, at least one chart, every chart has a
nonzero size and something drawn, the page does not scroll horizontally and
is laid out at the phone's width (it has <meta name="viewport"
content="width=device-width">); 1 otherwise ("problems" says why); 2 when
Chromium could not be started or the protocol failed (the reason on stderr).
A page that has not fired its load event a little before --timeout is
measured as it stands and fails with that problem.

The browser is --chromium, else $CHROMIUM, else `chromium`, else
`chromium-browser` on the PATH. It runs in its own process group with a
temporary profile; both are gone when the script exits, timeout included.
Python 3 standard library only.
"""

import argparse
import base64
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# What counts as drawn inside a chart.
DRAWN = "path, rect, line, polyline, circle, text"

# Runs in the page: the charts, the title, the tables, horizontal overflow.
MEASURE = r"""
(() => {
  const charts = Array.from(document.querySelectorAll(%s)).map((el, index) => {
    const box = el.getBoundingClientRect();
    return {
      id: el.id || String(index),
      index: index,
      width: box.width,
      height: box.height,
      drawn: el.querySelectorAll(%s).length,
    };
  });
  return {
    title: document.title,
    charts: charts,
    tables: document.querySelectorAll("table").length,
    scroll_width: document.documentElement.scrollWidth,
    inner_width: window.innerWidth,
    // The layout viewport: the phone's width when the page asks for
    // width=device-width, unlike innerWidth, which grows as Chromium zooms a
    // too-wide page out to fit.
    viewport_width: document.documentElement.clientWidth,
  };
})()
"""


class Failure(Exception):
    """Chromium could not be started, or the protocol failed (exit 2)."""


class Timeout(Failure):
    """A wait ran past the deadline."""


def find_chromium(explicit):
    if explicit:
        return explicit
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise Failure(
        "no Chromium: pass --chromium, set $CHROMIUM, or put chromium on the PATH "
        "(scripts/test.sh installs Debian's chromium)"
    )


def occupy_low_fds():
    """Makes sure fds 3 and 4 are open in this process, so that nothing
    subprocess creates for its own use (its exec error pipe) lands on the two
    numbers the child's are moved to. Returns the placeholders opened."""
    placeholders = []
    for _ in range(8):
        try:
            os.fstat(3)
            os.fstat(4)
            return placeholders
        except OSError:
            placeholders.append(os.open(os.devnull, os.O_RDONLY))
    return placeholders


def parent_death_signal():
    """A function for the child that asks Linux to kill it when this process
    dies (PR_SET_PDEATHSIG), or None where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class Browser:
    """A Chromium process and its DevTools pipe."""

    def __init__(self, binary, profile):
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()
        placeholders = occupy_low_fds()
        pdeathsig = parent_death_signal()

        def in_child():
            # Chromium reads commands on fd 3 and writes on fd 4. Both
            # numbers are open here (occupy_low_fds), so subprocess's own
            # pipe is elsewhere; dup first in case an end already sits on 3
            # or 4.
            read_end = os.dup(to_browser_read)
            write_end = os.dup(from_browser_write)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)
            if pdeathsig is not None:
                pdeathsig()

        arguments = [
            binary,
            "--headless=new",
            # Chromium refuses to start as root with its sandbox
            # (crbug.com/638180), and a container rarely allows the user
            # namespaces it needs.
            "--no-sandbox",
            "--disable-gpu",
            # A container's /dev/shm may be tiny (64 MB under Docker).
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--user-data-dir=" + profile,
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--mute-audio",
            "--hide-scrollbars",
            "--password-store=basic",
            "--use-mock-keychain",
            "about:blank",
        ]
        try:
            self.process = subprocess.Popen(
                arguments,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Chromium's own chatter (dbus, GPU) is noise here; its
                # errors that matter reach us through the protocol.
                stderr=subprocess.DEVNULL,
                pass_fds=(3, 4),
                preexec_fn=in_child,
                start_new_session=True,
            )
        except OSError as error:
            raise Failure("cannot start %s: %s" % (binary, error)) from error
        finally:
            os.close(to_browser_read)
            os.close(from_browser_write)
            for fd in placeholders:
                os.close(fd)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                written = os.write(self.to_browser, data)
                data = data[written:]
        except OSError as error:
            raise Failure("Chromium closed its pipe (%s) while sending %s" % (error, method))
        return self.next_id

    def receive(self, deadline, waiting_for):
        """The next message, or Timeout at the deadline."""
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("timed out waiting for " + waiting_for)
            ready, _, _ = select.select([self.from_browser], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                code = self.process.poll()
                raise Failure(
                    "Chromium closed its pipe while waiting for %s (exit status %s)"
                    % (waiting_for, code)
                )
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        try:
            return json.loads(message)
        except ValueError as error:
            raise Failure("Chromium sent a message that is not JSON: %r" % message[:200]) from error

    def call(self, method, params=None, session=None, deadline=None, on_event=None):
        """Sends a command and returns its result; events that arrive in the
        meantime go to on_event."""
        ident = self.send(method, params, session)
        while True:
            message = self.receive(deadline, method)
            if message.get("id") == ident:
                if "error" in message:
                    raise Failure("%s failed: %s" % (method, json.dumps(message["error"])))
                return message.get("result", {})
            if "method" in message and on_event is not None:
                on_event(message)

    def close(self):
        """Asks Chromium to quit, then kills its process group."""
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                self.send("Browser.close")
                process.wait(timeout=2)
            except (Failure, subprocess.TimeoutExpired):
                pass
        if process is not None:
            # Whatever is left of the group (renderers, the zygote).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for fd in (getattr(self, "to_browser", None), getattr(self, "from_browser", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


class Page:
    """What a page's session reports: its errors and its load."""

    def __init__(self, browser, session):
        self.browser = browser
        self.session = session
        self.errors = []
        self.loaded = False
        self.urls = {}

    def error(self, text):
        if text not in self.errors:
            self.errors.append(text)

    def on_event(self, message):
        if message.get("sessionId") != self.session:
            return
        method = message["method"]
        params = message.get("params", {})
        if method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            text = exception.get("description") or details.get("text", "exception")
            where = location(details)
            if details.get("url") and details["url"] in text:
                where = ""  # the stack in the description says where
            self.error("uncaught exception: %s%s" % (text, where))
        elif method == "Runtime.consoleAPICalled":
            if params.get("type") in ("error", "assert"):
                arguments = " ".join(describe(argument) for argument in params.get("args", []))
                self.error("console.%s: %s" % (params["type"], arguments))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                where = " (%s)" % entry["url"] if entry.get("url") else ""
                self.error("log (%s): %s%s" % (entry.get("source", "?"), entry.get("text", ""), where))
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            self.urls[params.get("requestId")] = url
            if not (url.startswith("file:") or url.startswith("data:")):
                self.error("fetched from outside: " + url)
        elif method == "Network.loadingFailed":
            url = self.urls.get(params.get("requestId"), "?")
            reason = params.get("errorText") or "blocked"
            if params.get("blockedReason"):
                reason += " (%s)" % params["blockedReason"]
            self.error("failed to load %s: %s" % (url, reason))
        elif method == "Fetch.requestPaused":
            # Only requests for outside URLs are intercepted (see Fetch.enable):
            # refused here, never sent.
            url = params.get("request", {}).get("url", "")
            self.error("fetched from outside: " + url)
            self.browser.send(
                "Fetch.failRequest",
                {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                self.session,
            )

    def call(self, method, params=None, deadline=None):
        return self.browser.call(method, params, self.session, deadline, self.on_event)

    def wait_for_load(self, deadline):
        while not self.loaded:
            message = self.browser.receive(deadline, "Page.loadEventFired")
            if "method" in message:
                self.on_event(message)


def location(details):
    url = details.get("url")
    if not url:
        return ""
    return " at %s:%s:%s" % (url, details.get("lineNumber", 0) + 1, details.get("columnNumber", 0) + 1)


def describe(argument):
    if "value" in argument:
        value = argument["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return argument.get("description") or argument.get("type", "?")


def check(args, browser):
    started = time.monotonic()
    deadline = started + args.timeout
    # Evaluating and the screenshot keep a share of the time, so that a page
    # that never finishes loading is still measured and reported.
    load_deadline = deadline - min(10.0, args.timeout / 4)

    target = browser.call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)
    attached = browser.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, deadline=deadline
    )
    page = Page(browser, attached["sessionId"])
    for domain in ("Runtime", "Log", "Page", "Network"):
        page.call(domain + ".enable", deadline=deadline)
    # Requests that would leave the machine are paused and refused.
    page.call(
        "Fetch.enable",
        {
            "patterns": [
                {"urlPattern": pattern}
                for pattern in ("http://*", "https://*", "ftp://*", "ws://*", "wss://*")
            ]
        },
        deadline=deadline,
    )
    page.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": args.width, "height": args.height, "deviceScaleFactor": 2, "mobile": True},
        deadline=deadline,
    )
    page.call("Emulation.setTouchEmulationEnabled", {"enabled": True}, deadline=deadline)

    url = "file://" + os.path.abspath(args.html)
    navigated = page.call("Page.navigate", {"url": url}, deadline=deadline)
    problems = []
    if navigated.get("errorText"):
        problems.append("navigation to %s failed: %s" % (url, navigated["errorText"]))
    else:
        try:
            page.wait_for_load(load_deadline)
        except Timeout:
            problems.append(
                "the page did not finish loading within %.0f s" % (load_deadline - started)
            )
            # A script still running (an endless loop) would hold up the
            # measuring too.
            page.call("Runtime.terminateExecution", deadline=deadline)
            page.call("Page.stopLoading", deadline=deadline)
    loaded_after = time.monotonic() - started

    expression = MEASURE % (json.dumps(args.chart_selector), json.dumps(DRAWN))
    evaluated = page.call(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, deadline=deadline
    )
    if "exceptionDetails" in evaluated:
        raise Failure("measuring the page failed: %s" % json.dumps(evaluated["exceptionDetails"]))
    measured = evaluated["result"]["value"]

    shot = page.call(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True},
        deadline=deadline,
    )
    directory = os.path.dirname(os.path.abspath(args.screenshot))
    os.makedirs(directory, exist_ok=True)
    with open(args.screenshot, "wb") as out:
        out.write(base64.b64decode(shot["data"]))

    # Errors reported after the screenshot (a late console.error) still count.
    page.call("Runtime.evaluate", {"expression": "0"}, deadline=deadline)

    # Wider than the layout viewport: at phone width the reader scrolls
    # sideways (or Chromium zooms the page out until it fits, which is why
    # window.innerWidth alone would not tell).
    horizontal = measured["scroll_width"] > min(measured["inner_width"], measured["viewport_width"])
    charts = measured["charts"]
    if page.errors:
        problems.append("%d error(s) while loading the page" % len(page.errors))
    if not charts:
        problems.append("no chart matches %s" % args.chart_selector)
    for chart in charts:
        if chart["width"] <= 0 or chart["height"] <= 0:
            problems.append(
                "chart %s has no size (%gx%g)" % (chart["id"], chart["width"], chart["height"])
            )
        if chart["drawn"] <= 0:
            problems.append("chart %s is empty: nothing drawn (%s)" % (chart["id"], DRAWN))
    if horizontal:
        problems.append(
            "the page scrolls horizontally at %d px: %d px wide, %d px viewport"
            % (args.width, measured["scroll_width"], measured["viewport_width"])
        )
    if measured["viewport_width"] > args.width:
        problems.append(
            "the page is laid out %d px wide, not at the phone's %d px, and shown shrunk: "
            'it lacks <meta name="viewport" content="width=device-width">'
            % (measured["viewport_width"], args.width)
        )
    return {
        "title": measured["title"],
        "errors": page.errors,
        "charts": charts,
        "tables": measured["tables"],
        "horizontal_scroll": horizontal,
        "scroll_width": measured["scroll_width"],
        "viewport_width": measured["viewport_width"],
        "screenshot": args.screenshot,
        "problems": problems,
        "seconds": {
            "loaded": round(loaded_after, 3),
            "total": round(time.monotonic() - started, 3),
        },
    }


def parse_arguments():
    parser = argparse.ArgumentParser(
        description="Check a self-contained HTML page in headless Chromium at phone size."
    )
    parser.add_argument("--html", required=True, help="the page to open")
    parser.add_argument("--screenshot", required=True, help="where to write the full-page PNG")
    parser.add_argument("--chromium", help="the browser (default: $CHROMIUM, chromium, chromium-browser)")
    parser.add_argument("--width", type=int, default=390, help="viewport width, CSS px")
    parser.add_argument("--height", type=int, default=844, help="viewport height, CSS px")
    parser.add_argument("--chart-selector", default="svg.chart", help="CSS selector of the charts")
    parser.add_argument("--timeout", type=float, default=60, help="bound of the whole check, seconds")
    return parser.parse_args()


def interrupted(signum, _frame):
    raise Failure("interrupted by signal %d" % signum)


def main():
    args = parse_arguments()
    if not os.path.isfile(args.html):
        print("check_page: no such file: %s" % args.html, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    profile = tempfile.mkdtemp(prefix="check-page-chromium-")
    browser = None
    try:
        browser = Browser(find_chromium(args.chromium), profile)
        result = check(args, browser)
    except Failure as error:
        print("check_page: %s" % error, file=sys.stderr)
        return 2
    finally:
        # Signals would interrupt the cleanup itself.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if browser is not None:
            browser.close()
        shutil.rmtree(profile, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

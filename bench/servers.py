"""The servers a benchmark run starts: nginx (upstream and split_clients), the tutorial proxy, abrouter.

Each is a child process pinned to one CPU with `taskset`, listening on 127.0.0.1 only, with its
config and logs in the run's temporary directory (never the system nginx or its config). CPU time
is read from /proc/<pid>/stat for the process and its descendants.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
FIXED_JSON: Final = '{"predictions": [0], "probabilities": [[0.9, 0.1]]}'
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = fields[fields.rindex(")") + 2 :].split()
        ticks += int(rest[11]) + int(rest[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / CLOCK_TICKS


def pin(pids: Sequence[int], cpu: int | None) -> None:
    """Move running processes (all their threads) to one CPU; None leaves them where they are."""
    if cpu is None:
        return
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})


class Server:
    """A child process serving HTTP on 127.0.0.1:`port`; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: Sequence[str], *, port: int, log: Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.args = list(args)
        self.port = port
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self, *, cpu: int | str | None, ready_path: str, body: bytes, timeout_s: float = 60.0) -> Server:
        """Launch pinned to `cpu` (a taskset CPU list when a string) and wait until POST `ready_path` answers 200."""
        self.launch(cpu=cpu)
        return self.wait_ready(ready_path=ready_path, body=body, timeout_s=timeout_s)

    def launch(self, *, cpu: int | str | None) -> None:
        """Start the process pinned to `cpu` with taskset (None: anywhere, to be pinned later)."""
        args = ["taskset", "-c", str(cpu), *self.args] if cpu is not None else self.args
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def wait_ready(self, *, ready_path: str, body: bytes, timeout_s: float = 60.0) -> Server:
        """Wait until POST `ready_path` answers 200; a process that exits or never answers is an error."""
        assert self.process is not None, f"{self.name} was not launched"
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            status, last = probe(self.port, ready_path, body)
            if status == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout_s:g} s (last: {last}): {self.tail()}")

    def cpu_seconds(self) -> float:
        return cpu_seconds(process_tree(self.pid))

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def terminate(self) -> None:
        """Ask the server to stop (SIGTERM) without waiting for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def stop_together(every: Sequence[Server]) -> None:
    """SIGTERM to all first, then wait for each: their graceful shutdowns overlap."""
    for server in every:
        server.terminate()
    for server in every:
        server.stop()


def probe(port: int, path: str, body: bytes) -> tuple[int | None, str]:
    """POST once; (status, what happened)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", "X-User-Id": "probe"})
        response = conn.getresponse()
        text = response.read()[:300].decode(errors="replace")
        return response.status, f"{response.status} {text}"
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _nginx_main(workdir: Path) -> str:
    temp = "\n".join(
        f"  {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 1000000;
  keepalive_timeout 75s;
"""


def nginx_upstream_conf(workdir: Path, port: int) -> str:
    """An upstream that answers every request with the same small JSON, the cheapest model server there is."""
    return (
        _nginx_main(workdir)
        + f"""  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{FIXED_JSON}';
    }}
  }}
}}
"""
    )


def nginx_split_conf(workdir: Path, port: int, upstream_port: int) -> str:
    """nginx as the A/B proxy: `split_clients` on X-User-Id picks one of two keep-alive upstream pools."""
    pools = "\n".join(
        f"""  upstream variant_{name} {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
    keepalive_requests 1000000;
  }}"""
        for name in ("a", "b")
    )
    return (
        _nginx_main(workdir)
        + f"""  split_clients "${{http_x_user_id}}" $variant {{
    50% a;
    *   b;
  }}
{pools}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://variant_$variant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header X-Variant $variant always;
    }}
  }}
}}
"""
    )


def nginx(name: str, conf: str, workdir: Path, *, port: int) -> Server:
    """An nginx master (and its one worker) with its own config and temp paths under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(conf)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    args = [binary, "-p", str(workdir), "-c", str(path), "-e", str(workdir / "error.log")]
    return Server(name, args, port=port, log=workdir / "stdout.log")


def python_upstream(workdir: Path, *, port: int) -> Server:
    """The fallback upstream when nginx is not installed (see bench/fixed_upstream.py)."""
    args = [sys.executable, "-m", "uvicorn", "bench.fixed_upstream:app", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--lifespan", "off", "--log-level", "warning"]
    return Server("upstream (python)", args, port=port, log=workdir / "python-upstream.log")


def tutorial_proxy(workdir: Path, *, port: int, upstream: str) -> Server:
    args = [sys.executable, "-m", "uvicorn", "bench.tutorial_proxy:app", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "warning"]
    return Server("tutorial", args, port=port, log=workdir / "tutorial.log", env={"BENCH_UPSTREAM": upstream})


def abrouter(
    name: str, workdir: Path, *, port: int, config: Path, redis_url: str, env: Mapping[str, str], workers: int = 1
) -> Server:
    """`abrouter serve` with `workers` worker processes, against the run's private Redis."""
    data_dir = workdir / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    args += ["--redis-url", redis_url, "--data-dir", str(data_dir), "--log-level", "warning", "--workers", str(workers)]
    return Server(
        name,
        args,
        port=port,
        log=workdir / f"{data_dir.name}.log",
        env={"ABROUTER_ADMIN_TOKEN": "bench-admin-token", **env},
    )

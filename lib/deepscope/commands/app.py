"""The explorer: `deepscope app OUT`, one web app over a whole output folder (local or s3://)."""
from __future__ import annotations

import sys
import time


def add_commands(sub) -> None:
    p = sub.add_parser("app", help="browse, sort, filter and follow every image, unit and neighbour of OUT in the browser")
    p.add_argument("out", help="an output folder (local or s3://...) made by `deepscope run` or its stages")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="of an image uploaded to search with")
    p.add_argument("--ray", action="store_true", help="search through the index's shards as Ray Serve replicas "
                                                       "(as `deepscope serve --ray`); the pages are served here")
    p.add_argument("--replicas", type=int, default=2, help="with --ray: replicas per index shard (default 2)")
    p.add_argument("--address", help="with --ray: the Ray cluster (default: RAY_ADDRESS or a local one)")
    p.set_defaults(fn="deepscope.commands.app:cmd_app")


def cmd_app(a):
    import uvicorn

    from deepscope.errors import UserError
    from deepscope.serve.app import Limits
    from deepscope.serve.explorer import create_explorer

    if not 0 < a.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {a.port}")
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"deepscope: warning: serving on {a.host}: reachable from other machines", file=sys.stderr)
    if a.replicas < 1:
        raise UserError(f"--replicas must be at least 1, got {a.replicas}")
    t = time.time()
    app = create_explorer(a.out, Limits(max_upload_bytes=int(a.max_upload_mb * 2**20)))
    tables, close = app.state.tables, None
    try:
        if a.ray:
            from deepscope.serve import cluster

            if not ((tables.store.summary("index") or {}).get("spaces")):
                raise UserError(f"{a.out} has no index to search on Ray: run `deepscope index {a.out}` first")
            app.state.search.searcher, close = cluster.deploy_shards(
                a.out, a.replicas, a.address, lambda m: print(m, file=sys.stderr, flush=True))
        print(f"{tables.n} images of {a.out} ready in {time.time() - t:.1f} s; "
              f"explore on http://{a.host}:{a.port}/", file=sys.stderr, flush=True)
        server = _server_class()(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning"))
        server.run()
    finally:  # the joined tables' temporary database (the command ends with os._exit: no finalizers)
        tables.close()
        if close:
            close()


def _server_class():
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but Ctrl-C and SIGTERM end it by returning (uvicorn re-raises the signal
        once shut down, which would kill the process before the temporary tables are removed)."""

        @contextlib.contextmanager
        def capture_signals(self):
            import signal

            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Server

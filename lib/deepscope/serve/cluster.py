"""`deepscope serve OUT --ray`: the same HTTP service as a Ray Serve application on a cluster.

  ShardReplica  one deployment per (space, shard) of the folder's indexes, `replicas` replicas each:
                a replica loads its shard (checked against the sha256 recorded at build time) and
                answers searches of prepared vectors.  Ray Serve restarts a replica that dies; the
                others of its deployment answer meanwhile.
  Router        the ingress: the FastAPI app of deepscope/serve/app.py (the same routes, limits and
                errors as the single-process server), whose searchers fan each query out to one
                replica of every shard and merge the k best (faiss.ResultHeap).  A search that hits a
                dying replica is retried once on another.

Answers equal the single-process server's: every shard is searched with the same setting and the
merge is the one faiss.IndexShards does.
"""
from __future__ import annotations

import time

import numpy as np

from deepscope.index.search import Searcher

APP = "deepscope"
EXPLORER_APP = "deepscope-explorer"


def shard_name(space: str, shard: int) -> str:
    return f"{space}-shard-{shard}"


class ShardReplica:
    """One shard of one space's index, in a Serve replica."""

    def __init__(self, out: str, space: str, shard: int):
        import faiss

        from deepscope.index.build import deserialize
        from deepscope.index.search import verified_bytes
        from deepscope.io.store import Store

        faiss.omp_set_num_threads(1)
        store = Store(out)
        f = store.summary("index")["spaces"][space]["shard_files"][shard]
        self.index = deserialize(verified_bytes(store, f["file"], f["sha256"]))

    def search(self, x: np.ndarray, k: int, setting: dict) -> tuple[np.ndarray, np.ndarray]:
        from deepscope.index.search import search_params

        return self.index.search(x, min(k, self.index.ntotal), params=search_params(self.index, **setting))

    def check_health(self):
        if self.index is None:
            raise RuntimeError("no index")


class RemoteSearcher(Searcher):
    """A Searcher whose FAISS search fans out to the shard replicas and merges the k best."""

    def __init__(self, store, space: str = "features", app_name: str = APP):
        super().__init__(store, space, load_index=False)
        from ray import serve

        self.handles = [serve.get_deployment_handle(shard_name(space, s), app_name=app_name)
                        for s in range(len(self.info["shard_files"]))]

    def raw_search(self, x, k, setting):
        from deepscope.index.build import merge_knn

        last = None
        for attempt in range(3):  # a replica that died mid-request: the handle routes the retry elsewhere
            try:
                calls = [h.search.remote(x, k, setting) for h in self.handles]
                parts = [c.result(timeout_s=60) for c in calls]
                break
            except Exception as e:  # RayActorError, ActorDiedError, ActorUnavailableError, timeouts
                last = e
                time.sleep(0.2 * (attempt + 1))
        else:
            raise RuntimeError(f"the index shards did not answer: {last}")
        if len(parts) == 1:
            return parts[0]
        return merge_knn([(np.ascontiguousarray(d), np.ascontiguousarray(r)) for d, r in parts], k)


class Router:
    def __init__(self, out: str, limits, *shards):  # shards: bound only so they deploy with the app
        self.out, self.limits = out, limits

    def __serve_build_asgi_app__(self):
        from deepscope.serve.app import create_app

        return create_app(self.out, self.limits, searcher=RemoteSearcher)


class ShardSet:
    """The ingress of the explorer's search application (`deepscope app OUT --ray`): it only binds
    the shard deployments, so that they deploy as one application; the explorer's searchers call
    the shards directly, and the explorer itself serves HTTP."""

    def __init__(self, *shards):
        pass


def shard_deployments(out: str, replicas: int) -> list:
    """A deployment per (space, shard) of the folder's indexes, bound to its shard."""
    from ray import serve

    from deepscope.io.store import Store

    spaces = ((Store(out).summary("index") or {}).get("spaces") or {})
    bound = []
    for space, info in spaces.items():
        for s in range(len(info["shard_files"])):
            dep = serve.deployment(ShardReplica, name=shard_name(space, s), num_replicas=replicas,
                                   ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32,
                                   health_check_period_s=2, health_check_timeout_s=10)
            bound.append(dep.bind(out, space, s))
    return bound


def application(out: str, limits, replicas: int = 2, router_replicas: int = 1):
    """The Serve application: a shard deployment per (space, shard), and the router in front."""
    from ray import serve

    router = serve.deployment(serve.ingress()(Router), name="router", num_replicas=router_replicas,
                              ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
    return router.bind(out, limits, *shard_deployments(out, replicas))


def deploy_shards(out: str, replicas: int, address: str | None, log):
    """`deepscope app OUT --ray`: the folder's index shards as Serve replicas on the cluster (no HTTP
    proxy: the explorer serves HTTP itself).  -> (the searcher class to give the explorer, a function
    that removes the application and disconnects)."""
    import functools

    import ray
    from ray import serve

    from deepscope.io.cluster import ensure_ray

    import logging

    ensure_ray(address)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's "Started Serve ..." lines
    serve.start(proxy_location="Disabled")
    t = time.time()
    ingress = serve.deployment(ShardSet, name="shards", num_replicas=1, ray_actor_options={"num_cpus": 0.1})
    serve.run(ingress.bind(*shard_deployments(out, replicas)), name=EXPLORER_APP, route_prefix=None)
    log(f"index shards on Ray Serve: {replicas} replicas per shard, deployed in {time.time() - t:.1f} s")

    def close():
        try:
            serve.delete(EXPLORER_APP)  # only ours: a `serve --ray` on the same cluster keeps running
        finally:
            ray.shutdown()

    return functools.partial(RemoteSearcher, app_name=EXPLORER_APP), close


def run(out: str, host: str, port: int, limits, replicas: int, address: str | None, log) -> None:
    """Deploy on the cluster (RAY_ADDRESS, --address, or a local one) and serve until interrupted."""
    from ray import serve

    from deepscope.io.cluster import ensure_ray

    import ray

    ensure_ray(address)
    # the HTTP proxy on the head node only: nodes of one machine (a loopback cluster) cannot share a port
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    serve.run(application(out, limits, replicas), name=APP, route_prefix="/")
    log(f"serving {out} on http://{host}:{port}/ (Ray Serve: {replicas} replicas per shard)")
    try:
        while True:
            time.sleep(3600)
    finally:
        try:
            serve.delete(APP)
            serve.shutdown()
        finally:
            ray.shutdown()

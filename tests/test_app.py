"""The explorer (`deepscope app`) on a real uvicorn server over generated outputs written with the real
schemas (bench/app.py's generate(): 60 images, 3 failed ones, ids that need escaping): every filter
and sort against pandas over the same tables, pictures by id, bad queries (one 4xx, the server keeps
serving), the same folder on S3 (moto), the `graph` map method, and a real browser."""
import importlib.util
import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import uvicorn
from PIL import Image

from deepscope.serve.explorer import create_explorer
from test_commit import s3  # noqa: F401  (module fixture: moto's S3 server on loopback)
from test_serve import free_port

_spec = importlib.util.spec_from_file_location("bench_app", Path(__file__).resolve().parents[1] / "bench" / "app.py")
bench_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_app)
N = 60


def serve(app):
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    return srv, thread, port


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    truth = bench_app.generate(str(root / "out"), N, part_rows=25, images_dir=str(root / "images"))
    srv, thread, port = serve(create_explorer(str(root / "out")))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, root / "out", truth, port
    srv.should_exit = True
    thread.join(10)


def expected_table(out: Path) -> pd.DataFrame:
    """The gallery's table computed directly with pandas from the parts."""
    def parts(stage):
        return pd.concat([pd.read_parquet(p) for p in sorted((out / stage).glob("part-*.parquet"))], ignore_index=True)

    feats = parts("features")[["id", "path", "label"]]
    errors = parts("errors")
    errors = errors.assign(error=errors.stage + ": " + errors.error)[["id", "path", "error"]]
    df = pd.concat([feats, errors], ignore_index=True)
    df = df.merge(pd.read_parquet(out / "knn/images.parquet").drop(columns=["path", "label"]), on="id", how="left")
    sal = parts("saliency")
    df = df.merge(sal.groupby("id").pred.first().rename("pred"), on="id", how="left")
    named = sal[sal.target == sal.pred].groupby("id").target_name.first().rename("pred_name")
    df = df.merge(named, on="id", how="left")
    for method, g in sal.groupby("method"):
        stats = g.set_index("id")[["entropy", "top_mass", "com_x", "com_y"]].add_prefix(f"saliency_{method}_")
        df = df.merge(stats, left_on="id", right_index=True, how="left")
    rob = parts("robustness")[["id", "margin", "min_eps", "adv_pred"]]
    df = df.merge(rob, on="id", how="left")
    coords = pd.read_parquet(out / "map/coords.parquet")[["id", "tsne_x", "tsne_y"]]
    df = df.merge(parts("thumbs")[["id", "width", "height"]], on="id", how="left")
    return df.merge(coords.rename(columns={"tsne_x": "map_x", "tsne_y": "map_y"}), on="id", how="left")


def all_ids(client, params) -> list[str]:
    r = client.get("/api/images", params=[*params, ("per", "500")])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(body["rows"])
    return [row["id"] for row in body["rows"]]


def test_every_filter_and_sort_equals_pandas(explorer):
    client, out, truth, _ = explorer
    df = expected_table(out)
    assert len(df) == N + 3
    info = client.get("/api/info").json()
    fields = {f["name"]: f["kind"] for f in info["fields"]}
    assert {"label", "uniqueness", "group", "label_flagged", "majority_label", "pred", "error", "min_eps",
            "saliency_gradcam_entropy", "saliency_backprop_top_mass", "map_x"} <= set(fields)
    assert all_ids(client, []) == sorted(df.id)
    checked = 0
    for name, kind in fields.items():
        col = df[name]
        for desc in (False, True):  # sort: missing values last, ties by id
            want = df.assign(_k=col).sort_values(["_k", "id"], ascending=[not desc, True], na_position="last").id
            assert all_ids(client, [("sort", ("-" if desc else "") + name)]) == list(want), name
        for null in ("true", "false"):
            assert all_ids(client, [(f"{name}.null", null)]) == sorted(df.id[col.isna() == (null == "true")]), name
        if kind == "number":
            mid = float(col.dropna().median())
            assert all_ids(client, [(f"{name}.min", repr(mid))]) == sorted(df.id[col >= np.float32(mid)]), name
            assert all_ids(client, [(f"{name}.max", repr(mid))]) == sorted(df.id[col <= np.float32(mid)]), name
        elif kind == "bool":
            for v in (True, False):
                assert all_ids(client, [(name, str(v).lower())]) == sorted(df.id[col == v]), name
        else:
            value = col.dropna().iloc[min(3, col.notna().sum() - 1)]
            assert all_ids(client, [(name, value)]) == sorted(df.id[col == value]), name
        checked += 1
    assert checked == len(fields)
    # repeated values: any of them; different fields: all of them; with a sort and pages
    got = all_ids(client, [("label", "class_3"), ("label", "class_7"), ("label_flagged", "false"),
                           ("uniqueness.min", "0.5"), ("sort", "-uniqueness")])
    want = df[df.label.isin(["class_3", "class_7"]) & (df.label_flagged == False) & (df.uniqueness >= 0.5)]  # noqa: E712
    assert got == list(want.sort_values(["uniqueness", "id"], ascending=[False, True]).id) and len(got) > 2
    pages = [client.get("/api/images", params={"sort": "-uniqueness", "per": 7, "page": p}).json()["rows"] for p in range(3)]
    assert [r["id"] for page in pages for r in page] == all_ids(client, [("sort", "-uniqueness")])[:21]
    box = (-1.0, -2.0, 3.0, 4.0)
    inside = df[(df.map_x >= box[0]) & (df.map_x <= box[2]) & (df.map_y >= box[1]) & (df.map_y <= box[3])]
    assert all_ids(client, [("box", ",".join(map(str, box)))]) == sorted(inside.id) and len(inside) > 0
    # a lasso (a concave polygon, negative coordinates included) against matplotlib's point-in-polygon
    from matplotlib.path import Path as PolygonPath

    lasso = [(-3.0, -3.0), (4.0, -2.5), (0.5, 0.0), (3.5, 3.0), (-2.5, 2.0)]
    mapped = df.dropna(subset=["map_x", "map_y"])
    inside = mapped[PolygonPath(lasso).contains_points(mapped[["map_x", "map_y"]].to_numpy(np.float64))]
    got = all_ids(client, [("lasso", ",".join(f"{x},{y}" for x, y in lasso)), ("label_flagged", "false")])
    assert got == sorted(inside.id[inside.label_flagged == False]) and len(got) > 0  # noqa: E712
    # with a sort, in pages, and its count (the lasso is evaluated once for both)
    lasso_q = ("lasso", ",".join(f"{x},{y}" for x, y in lasso))
    pages = [client.get("/api/images", params=[lasso_q, ("sort", "-uniqueness"), ("per", "4"), ("page", p)]).json()
             for p in range(3)]
    want = list(inside.sort_values(["uniqueness", "id"], ascending=[False, True], na_position="last").id)
    assert [r["id"] for page in pages for r in page["rows"]] == want[:12] and pages[0]["total"] == len(inside)
    assert client.get("/api/images", params=[lasso_q, ("page", 99)]).json() == {"total": len(inside), "page": 99,
                                                                               "per": 60, "rows": []}
    assert all_ids(client, [("q", "Ü ñ")]) == ["x/ü ñ 日本.png"]


def test_ids_that_need_escaping(explorer):
    client, out, truth, _ = explorer
    for odd in bench_app.ODD_IDS:
        me = client.get("/api/image", params={"id": odd})
        assert me.status_code == 200, (odd, me.text)
        body = me.json()
        assert body["id"] == odd
        i = truth["ids"].index(odd)
        assert body["label"] == truth["labels"][i]
        graph = pd.concat([pd.read_parquet(p) for p in sorted((out / "knn/features").glob("*.parquet"))]).set_index("id")
        assert [n["id"] for n in body["neighbors"]["features"]] == list(graph.loc[odd, "neighbor_ids"])
        thumb = client.get("/api/thumb", params={"id": odd})
        thumbs = pd.concat([pd.read_parquet(p) for p in sorted((out / "thumbs").glob("*.parquet"))]).set_index("id")
        assert thumb.status_code == 200 and thumb.content == thumbs.loc[odd, "thumb"]
        original = client.get("/api/original", params={"id": odd})
        assert original.content == Path(truth["paths"][i]).read_bytes()
    # a duplicate pair (every 50th image and the next), with the image's units and their concepts
    pair = client.get("/api/image", params={"id": truth["ids"][50]}).json()
    assert [d["id"] for d in pair["duplicates"]] == [truth["ids"][51]] and pair["group_size"] == 2
    copy = client.get("/api/image", params={"id": truth["ids"][51]}).json()
    assert pair["duplicate_of"] is None and copy["duplicate_of"] == truth["ids"][50]  # which to keep, which to remove
    assert pair["group_chosen"] and copy["group_chosen"]
    patches = pq.read_table(out / f"patches/top-{bench_app.LAYER}.parquet").to_pandas()
    some = patches.id.iloc[0]
    units = client.get("/api/image", params={"id": some}).json()["units"]
    assert sorted((u["unit"], u["rank"]) for u in units) == sorted(
        (int(c), int(r)) for c, r in patches[patches.id == some][["channel", "rank"]].values)


def test_units_and_pictures(explorer):
    client, out, truth, _ = explorer
    patches = pq.read_table(out / f"patches/top-{bench_app.LAYER}.parquet").to_pandas()
    iou = pd.read_parquet(out / f"dissection/iou-{bench_app.LAYER}.parquet")
    units = client.get("/api/units", params={"sort": "-iou"}).json()
    assert units["layer"] == bench_app.LAYER
    assert [u["unit"] for u in units["units"]] == list(iou.sort_values(["iou", "unit"], ascending=[False, True]).unit)
    by_concept = client.get("/api/units", params={"sort": "concept"}).json()["units"]
    assert [u["unit"] for u in by_concept] == list(iou.sort_values(["concept", "unit"]).unit)
    one = client.get("/api/unit", params={"layer": bench_app.LAYER, "unit": 5}).json()
    want = patches[patches.channel == 5].sort_values("rank")
    assert [p["id"] for p in one["patches"]] == list(want.id) and one["concept"] == iou.concept[5]
    png = client.get("/api/patch", params={"layer": bench_app.LAYER, "unit": 5, "rank": 2})
    assert png.content == want.patch.iloc[2]
    assert client.get("/api/picture", params={"layer": bench_app.LAYER, "unit": 4}).status_code == 200
    assert client.get("/api/picture", params={"layer": bench_app.LAYER, "unit": 5}).status_code == 404
    # saliency: the map of the parts, drawn; adversarial: the PNG the robustness stage wrote
    sal = pd.concat([pd.read_parquet(p) for p in sorted((out / "saliency").glob("*.parquet"))])
    row = sal[(sal.id == truth["ids"][7]) & (sal.method == "gradcam")].iloc[0]
    heat = Image.open(io.BytesIO(client.get("/api/saliency", params={"id": truth["ids"][7], "method": "gradcam"}).content))
    assert heat.size == (224, 224)
    peak = np.unravel_index(np.argmax(np.asarray(row["map"], np.float32)), (7, 7))
    bright = np.asarray(heat.convert("L").resize((7, 7), Image.BOX), np.float32)
    assert np.unravel_index(np.argmax(bright), (7, 7)) == peak
    rob = pd.concat([pd.read_parquet(p) for p in sorted((out / "robustness").glob("*.parquet"))]).set_index("id")
    hit = rob.adversarial.dropna().index[0]
    assert client.get("/api/adversarial", params={"id": hit}).content == (out / rob.adversarial[hit]).read_bytes()
    miss = rob.adversarial[rob.adversarial.isna()].index[0]
    assert client.get("/api/adversarial", params={"id": miss}).status_code == 404


def test_map_points_match_coords(explorer):
    client, out, truth, _ = explorer
    meta = client.get("/api/map").json()
    data = client.get("/api/map/points").content
    n = meta["n"]
    x, y = np.frombuffer(data, np.float32, n), np.frombuffer(data, np.float32, n, 4 * n)
    coords = pd.read_parquet(out / "map/coords.parquet").set_index("id")
    ids = all_ids(client, [])  # gallery order (by id) is the points' order
    assert np.array_equal(x, coords.tsne_x.reindex(ids).to_numpy(np.float32), equal_nan=True)
    assert np.array_equal(y, coords.tsne_y.reindex(ids).to_numpy(np.float32), equal_nan=True)
    codes = np.frombuffer(data, np.uint16, n, 8 * n)
    labels = [r["label"] for r in client.get("/api/images", params={"per": 500}).json()["rows"]]
    assert [meta["labels"][c - 1] if c else None for c in codes] == labels
    near = client.get("/api/map/near", params={"box": "-100,-100,100,100", "limit": 5}).json()
    assert len(near) == 5 and all(coords.tsne_x[p["id"]] == np.float32(p["x"]) for p in near)


@pytest.mark.parametrize("url, params, status, words", [
    ("/api/images", {"bogus": "1"}, 400, "unknown field 'bogus'"),
    ("/api/images", {"uniqueness.min": "abc"}, 400, "uniqueness must be a number"),
    ("/api/images", {"uniqueness.min": "nan"}, 400, "finite"),
    ("/api/images", {"label_flagged": "yes"}, 400, "true or false"),
    ("/api/images", {"label.min": "3"}, 400, "not a number"),
    ("/api/images", {"sort": "-nope"}, 400, "cannot sort by unknown field"),
    ("/api/images", {"per": "0"}, 400, "per between"),
    ("/api/images", {"page": "x"}, 400, "whole numbers"),
    ("/api/images", {"box": "1,2,3"}, 400, "box must be"),
    ("/api/images", {"lasso": "0,0,1,1"}, 400, "lasso must be 3 to"),
    ("/api/images", {"lasso": "0,0,1,x,2,2"}, 400, "lasso must be"),
    ("/api/images", {"lasso": "0,0,1,1,inf,2"}, 400, "finite"),
    ("/api/images", {"label.like": "x"}, 400, "unknown filter"),
    ("/api/images", {"label": "x'; DROP TABLE images; --"}, 200, None),
    ("/api/image", {"id": "no such image"}, 404, "unknown image id"),
    ("/api/units", {"layer": "nope"}, 400, "unknown layer"),
    ("/api/units", {"sort": "row; drop"}, 400, "units sort by one of"),
    ("/api/unit", {"layer": bench_app.LAYER, "unit": "x"}, 422, None),
    ("/api/map/near", {"box": "0,0,1,1", "limit": "100000"}, 400, "limit"),
])
def test_a_bad_query_gets_one_clear_4xx_and_the_server_keeps_serving(explorer, url, params, status, words):
    client = explorer[0]
    r = client.get(url, params=params)
    assert r.status_code == status, r.text
    if words:
        assert words in r.json()["detail"]
    assert client.get("/api/images", params={"per": 1}).json()["total"] == N + 3


def test_thumbnails_decoded_from_originals_without_a_thumbs_stage(tmp_path):
    truth = bench_app.generate(str(tmp_path / "out"), 12, part_rows=6, images_dir=str(tmp_path / "images"), thumbs=False)
    app = create_explorer(str(tmp_path / "out"))
    assert not app.state.tables.has_thumbs
    srv, thread, port = serve(app)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/thumb", params={"id": truth["ids"][3]})
        assert r.headers["content-type"] == "image/jpeg"
        want = np.asarray(Image.open(truth["paths"][3]).convert("RGB"), np.float32).mean((0, 1))
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32).mean((0, 1))
        assert np.abs(got - want).max() < 4  # the same flat colour, through JPEG
        assert httpx.get(f"http://127.0.0.1:{port}/api/thumb", params={"id": "nope"}).status_code == 404
    finally:
        srv.should_exit = True
        thread.join(10)


def test_the_same_folder_on_s3(s3, tmp_path):  # noqa: F811
    import fsspec

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3["AWS_ENDPOINT_URL"]
    local = tmp_path / "out"
    bench_app.generate(str(local), 20, part_rows=10)
    remote = "s3://deepscope/app/out"
    bench_app.generate(remote, 20, part_rows=10)
    want = create_explorer(str(local)).state.tables
    got = create_explorer(remote).state.tables
    q = [("label_flagged", "false"), ("sort", "-uniqueness"), ("per", "500")]
    assert got.gallery(q) == want.gallery(q) and got.n == 23
    one = want.gallery(q)["rows"][4]["id"]
    assert got.thumb(one) == want.thumb(one) and got.image(one)["neighbors"] == want.image(one)["neighbors"]
    assert got.patch(bench_app.LAYER, 3, 1) == want.patch(bench_app.LAYER, 3, 1)
    assert not list(tmp_path.glob("**/deepscope")), "nothing written locally for the remote folder"


def test_graph_tsne_keeps_clusters_apart():
    """t-SNE from a precomputed exact k-NN graph: ten separated clusters stay separated in 2-D
    (each point's 5 nearest on the map share its cluster), every point placed."""
    from deepscope.algos.embed import graph_tsne

    rng = np.random.default_rng(0)
    n, k = 600, 10
    cluster = np.arange(n) % 10
    x = rng.normal(size=(n, 20)) + 8 * np.eye(20)[cluster]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nb = np.argsort(d, 1)[:, :k]
    xy = graph_tsne(nb, np.sqrt(np.take_along_axis(d, nb, 1)), x[:, :2], iterations=150, n_jobs=1)
    assert xy.shape == (n, 2) and np.isfinite(xy).all()
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    agree = (cluster[np.argsort(d2, 1)[:, :5]] == cluster[:, None]).mean()
    assert agree > 0.95, agree


def test_map_method_graph_places_every_image_by_its_neighbours(tmp_path):
    """The map stage's `graph` method on an output whose knn parts list the rows in another order
    than the features: each image lands near its graph neighbours (ids matched, not positions)."""
    import pyarrow as pa

    from deepscope.io import schemas
    from deepscope.io.store import Store
    from deepscope.executor import RunContext
    from deepscope.stages.map import Map, MapConfig

    truth = bench_app.generate(str(tmp_path / "out"), 80, part_rows=40, images_dir=str(tmp_path / "images"))
    store = Store(tmp_path / "out")
    # replace the random graph by a ring: image i's neighbours are i +- 1..5 (graph rows = reversed ids)
    n, ids = 80, truth["ids"]
    row_of = {i: n - 1 - j for j, i in enumerate(ids)}
    for stage in ("knn/features",):
        store.drop_parts_except(stage, set())
        for start in (0, 40):
            js = range(start, start + 40)
            nbr = [[ids[(j + o) % n] for o in (1, -1, 2, -2, 3, -3, 4, -4, 5, -5)] for j in js]
            store.write_part(stage, f"part-{start:06d}", pa.table({
                "id": [ids[j] for j in js], "path": [truth["paths"][j] for j in js], "label": [truth["labels"][j] for j in js],
                "row": pa.array([row_of[ids[j]] for j in js], pa.int64()),
                "neighbor_ids": nbr, "neighbor_rows": [[row_of[i] for i in r] for r in nbr],
                "distances": pa.array([[float(abs(o)) for o in (1, 1, 2, 2, 3, 3, 4, 4, 5, 5)]] * 40, pa.list_(pa.float32()))},
                schema=schemas.KNN_GRAPH))
    store.flush()

    ctx = RunContext(store=store, job=None, log=lambda *a: None)
    summary = Map(MapConfig(method="graph", iterations=200, grid=4), job=None).finish(ctx)
    assert summary["method"] == "graph" and summary["tsne_sample"] == n
    coords = pd.read_parquet(tmp_path / "out/map/coords.parquet").set_index("id").loc[ids]
    assert coords.tsne_sample.all() and np.isfinite(coords[["tsne_x", "tsne_y"]].to_numpy()).all()
    xy = coords[["tsne_x", "tsne_y"]].to_numpy()
    ring = np.mean([np.linalg.norm(xy[j] - xy[(j + 1) % n]) for j in range(n)])
    far = np.mean([np.linalg.norm(xy[j] - xy[(j + n // 2) % n]) for j in range(n)])
    assert ring < 0.2 * far, (ring, far)


def test_the_explorer_in_chromium(explorer):
    """A user's path: filter the gallery to flagged labels, open an image, follow a neighbour, open a
    unit from it, select a region of the map and see the gallery follow; no console error."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from test_knn import chromium, console_errors

    client, out, truth, port = explorer
    driver = chromium()
    try:
        wait = WebDriverWait(driver, 60)

        def ready(view):
            wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == view)

        def shown(where):
            return driver.execute_script(f"return [...document.querySelectorAll('{where} figure')].map(f => f.dataset.id)")

        driver.get(f"http://127.0.0.1:{port}/")
        ready("gallery")
        assert len(shown("#grid")) == 60
        Select(driver.find_element(By.NAME, "label_flagged")).select_by_value("true")
        wait.until(lambda d: "label_flagged=true" in d.current_url)
        ready("gallery")
        flagged = client.get("/api/images", params={"label_flagged": "true", "per": 500}).json()["rows"]
        assert shown("#grid") == [r["id"] for r in flagged] and len(flagged) > 0
        driver.find_element(By.CSS_SELECTOR, "#grid figure").click()
        ready("image")
        assert driver.find_element(By.ID, "title").text == flagged[0]["id"]
        neighbour = shown("#nb-features")[0]
        assert neighbour == client.get("/api/image", params={"id": flagged[0]["id"]}).json()["neighbors"]["features"][0]["id"]
        driver.find_element(By.CSS_SELECTOR, "#nb-features figure").click()
        ready("image")
        assert driver.find_element(By.ID, "title").text == neighbour
        driver.back()  # the URL held the view: back is the flagged image again
        ready("image")
        assert driver.find_element(By.ID, "title").text == flagged[0]["id"]
        driver.find_element(By.CSS_SELECTOR, "#nb-features figure").click()
        ready("image")
        units = client.get("/api/image", params={"id": neighbour}).json()["units"]
        assert units, "the generated patches give this image units"
        driver.find_element(By.CSS_SELECTOR, "#units figure").click()
        ready("unit")
        assert driver.find_element(By.ID, "title").text.startswith(f"{units[0]['layer']} unit {units[0]['unit']}")
        assert len(shown("#drivers")) == 8
        wait.until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        assert driver.execute_script("return [...document.images].every(i => i.naturalWidth > 0)")

        driver.find_element(By.CSS_SELECTOR, "nav a[data-view=map]").click()
        ready("map")
        canvas = driver.find_element(By.ID, "map")
        (ActionChains(driver).move_to_element_with_offset(canvas, -150, -120).key_down(Keys.SHIFT).click_and_hold()
         .move_by_offset(200, 150).release().key_up(Keys.SHIFT).perform())
        wait.until(lambda d: "box=" in d.current_url)
        ready("gallery")
        box = driver.execute_script("return new URLSearchParams(location.search).get('box')")
        want = client.get("/api/images", params={"box": box, "per": 500}).json()["rows"]
        x0, y0, x1, y1 = map(float, box.split(","))
        assert want and all(x0 <= r["map_x"] <= x1 and y0 <= r["map_y"] <= y1 for r in want)
        assert shown("#grid") == [r["id"] for r in want]

        # a lasso drawn with the mouse (the tool chosen in the page): the gallery shows what is inside it
        driver.find_element(By.CSS_SELECTOR, "nav a[data-view=map]").click()
        ready("map")
        Select(driver.find_element(By.ID, "tool")).select_by_value("lasso")
        canvas = driver.find_element(By.ID, "map")
        chain = ActionChains(driver).move_to_element_with_offset(canvas, -200, -150).click_and_hold()
        for dx, dy in [(120, 10), (120, 10), (40, 90), (40, 90), (-150, 60), (-110, -40), (-60, -110)]:
            chain = chain.move_by_offset(dx, dy)
        chain.release().perform()
        wait.until(lambda d: "lasso=" in d.current_url)
        ready("gallery")
        lasso = driver.execute_script("return new URLSearchParams(location.search).get('lasso')")
        vertices = np.asarray(lasso.split(","), np.float64).reshape(-1, 2)
        assert len(vertices) >= 3
        want = client.get("/api/images", params={"lasso": lasso, "per": 500}).json()["rows"]
        from matplotlib.path import Path as PolygonPath

        everything = client.get("/api/images", params={"per": 500, "map_x.null": "false"}).json()["rows"]
        inside = PolygonPath(vertices).contains_points([(r["map_x"], r["map_y"]) for r in everything])
        assert want and sorted(r["id"] for r in want) == sorted(r["id"] for r, i in zip(everything, inside) if i)
        assert shown("#grid") == [r["id"] for r in want]
        assert "lasso of" in driver.find_element(By.CSS_SELECTOR, ".chip").text

        # a duplicate pair: the copy's page says which image of its group is kept
        from urllib.parse import urlencode

        driver.get(f"http://127.0.0.1:{port}/?" + urlencode({"view": "image", "id": truth["ids"][51]}))
        ready("image")
        heading = driver.find_element(By.XPATH, "//h2[starts-with(., 'Near-duplicates')]").text
        assert heading == f"Near-duplicates (group of 2; this image: a copy of {truth['ids'][50]}, which is kept)", heading
        assert shown("#dups") == [truth["ids"][50]]
        assert console_errors(driver) == []
    finally:
        driver.quit()


def test_cli_refuses_a_folder_that_is_not_an_output_in_one_line(tmp_path, capsys):
    from deepscope.commands import main

    assert main(["app", str(tmp_path / "nothing")]) == 2
    assert main(["app", str(tmp_path), "--port", "70000"]) == 2
    assert main(["app", str(tmp_path), "--ray", "--replicas", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "is not a deepscope output folder" in err[0] and "--port must be" in err[1], err
    assert "--replicas must be at least 1" in err[2], err


def test_app_ray_on_a_folder_without_an_index_says_so_before_starting_ray(explorer, capsys, monkeypatch):
    from deepscope.commands import main
    from deepscope.serve import cluster

    def deploy(*a, **k):
        raise AssertionError("Ray was started for a folder without an index")

    monkeypatch.setattr(cluster, "deploy_shards", deploy)
    assert main(["app", str(explorer[1]), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no index to search on Ray" in err[0], err

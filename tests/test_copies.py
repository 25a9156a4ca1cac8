"""Is an image a copy of a folder's images: `deepscope query OUT --image FILE --copies` (and --id, and the
service's POST /copies).  The decision for a pair is the knn stage's: checked against the stage's own
decisions on a job's folder, and on new images whose answer is known (an edited copy, an exact copy, a
picture the folder does not hold)."""
import shutil

import pytest
from test_knn import bench_duplicates, knn_job

from deepscope.cli import main
from deepscope.io.store import Store

PHOTOS = ("camera", "coffee", "astronaut", "chelsea", "page", "rocket")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six of scikit-image's photos as PNG, two of them with copies in the folder (coffee flipped, astronaut as
    JPEG 60), through features, pixels, thumbs, both indexes and knn from a job's dict."""
    bench = bench_duplicates()
    tmp = tmp_path_factory.mktemp("copies")
    data = tmp / "data"
    data.mkdir()
    for name in PHOTOS:
        (data / f"{name}.png").write_bytes(bench._cv(bench.whole_photo(name), ".png"))
    (data / "coffee--flip.jpg").write_bytes(bench.CV_EDITS["cv_flip"](bench.whole_photo("coffee"))[0])
    (data / "astronaut--jpeg60.jpg").write_bytes(bench.CV_EDITS["cv_jpeg60"](bench.whole_photo("astronaut"))[0])
    knn_job(data, tmp / "out", k=5)
    return bench, data, tmp / "out"


def lines(capsys, *argv):
    code = main(list(map(str, argv)))
    cap = capsys.readouterr()
    return code, [line.split("\t") for line in cap.out.strip().splitlines()[1:]], cap.err.strip().splitlines()


def test_new_images_edited_copy_exact_copy_and_another_picture(folder, capsys, tmp_path):
    """A new copy of the camera man (flipped, cropped 8%, 80%, captioned, WebP 70: the combined edit) is a copy
    of camera.png alone, mirrored; a file with chelsea's pixels is its exact copy; a photo the folder does not
    hold (the moon) is a copy of nothing.  Each answer: one line a candidate, copies first, and a picture."""
    bench, data, out = folder
    (tmp_path / "camera-edited.webp").write_bytes(bench.CV_EDITS["cv_all"](bench.whole_photo("camera"))[0])
    shutil.copy(data / "chelsea.png", tmp_path / "chelsea-again.png")
    (tmp_path / "moon.png").write_bytes(bench._cv(bench.whole_photo("moon"), ".png"))

    code, rows, err = lines(capsys, "query", out, "--image", tmp_path / "camera-edited.webp", "--copies", "--k", "4")
    assert code == 0 and [r[2] for r in rows if r[0] == "yes"] == ["camera.png"], rows
    assert rows[0][1] == "edited" and rows[0][4].startswith("mirrored"), rows[0]
    assert len(rows) >= 4 and all(r[0] == "no" and r[4] for r in rows[1:])  # every other candidate says why not
    assert len(err) == 1 and err[0].startswith("# 1 copy among") and (out / "queries/camera-edited.webp-copies.png").stat().st_size > 0

    code, rows, _ = lines(capsys, "query", out, "--image", tmp_path / "chelsea-again.png", "--copies")
    assert code == 0 and [(r[2], r[1]) for r in rows if r[0] == "yes"] == [("chelsea.png", "exact")], rows

    code, rows, err = lines(capsys, "query", out, "--image", tmp_path / "moon.png", "--copies")
    assert code == 0 and rows and all(r[0] == "no" for r in rows) and err[0].startswith("# 0 copies among"), rows


def test_a_folder_of_new_images_into_parquet(folder, capsys, tmp_path):
    """--images DIR --out RESULT.parquet: each new image's candidates (schemas.COPIES), the same answers as one
    query at a time; a truncated file is one row with its error and the rest completes; one summary line."""
    import pyarrow.parquet as pq

    from deepscope.io import schemas

    bench, data, out = folder
    new = tmp_path / "new"
    (new / "sub").mkdir(parents=True)
    (new / "camera-edited.webp").write_bytes(bench.CV_EDITS["cv_all"](bench.whole_photo("camera"))[0])
    shutil.copy(data / "chelsea.png", new / "sub" / "chelsea-again.png")
    (new / "moon.png").write_bytes(bench._cv(bench.whole_photo("moon"), ".png"))
    (new / "broken.jpg").write_bytes((data / "astronaut--jpeg60.jpg").read_bytes()[:600])
    (new / "notes.txt").write_text("not an image")
    code = main(["query", str(out), "--images", str(new), "--copies", "--k", "4", "--out", str(tmp_path / "copies.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and err[-1].startswith("copies: 4 images, 2 with a copy in") and "1 unreadable" in err[-1], err
    t = pq.read_table(tmp_path / "copies.parquet")
    assert t.schema.equals(schemas.COPIES)
    rows = t.to_pylist()
    copies = sorted((r["query"], r["id"], r["tier"]) for r in rows if r["copy"])
    assert copies == [("camera-edited.webp", "camera.png", "edited"), ("sub/chelsea-again.png", "chelsea.png", "exact")], copies
    broken = [r for r in rows if r["query"] == "broken.jpg"]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["id"] is None, broken
    assert {r["query"] for r in rows} == {"camera-edited.webp", "sub/chelsea-again.png", "moon.png", "broken.jpg"}
    # the same candidates and answers as the one-image query
    code, one, _ = lines(capsys, "query", out, "--image", new / "camera-edited.webp", "--copies", "--k", "4")
    assert [(r[2], r[0] == "yes") for r in one] == [(r["id"], r["copy"]) for r in rows if r["query"] == "camera-edited.webp"]


def test_copies_of_the_folders_images_are_the_knn_stages_decisions(folder):
    """For each image of the folder (--id), every candidate that the knn stage also decided on gets the
    stage's decision (the same first look, order and tests), and its copies in the folder are found."""
    import pyarrow.parquet as pq

    from deepscope.index import copies as C
    from deepscope.index.knn import indexed_spaces
    from deepscope.index.search import Searcher
    from deepscope.io.store import Store
    from deepscope.stages.knn import KnnConfig

    _, _, out = folder
    store = Store(str(out))
    searchers = {s: Searcher(store, s) for s in indexed_spaces(store)}
    stage = {frozenset((r["a"], r["b"])): r["accepted"] for r in pq.read_table(out / "knn/candidates.parquet").to_pylist()}
    thumbs = C.Thumbs(store, searchers["features"].ids)
    compared = []
    for image_id in searchers["features"].ids:
        rows, summary, _ = C.find_copies(searchers, thumbs, C.query_of_id(store, image_id, searchers, thumbs), 5, KnnConfig())
        assert image_id not in {r["id"] for r in rows} and summary["copies"] == sum(r["copy"] for r in rows)
        for r in rows:
            pair = frozenset((image_id, r["id"]))
            if pair in stage:
                compared.append((stage[pair], r["copy"]))
    assert len(compared) >= 20 and all(s == q for s, q in compared), compared
    assert {True, False} <= {s for s, _ in compared}
    coffee = C.find_copies(searchers, thumbs, C.query_of_id(store, "coffee--flip.jpg", searchers, thumbs), 5, KnnConfig())[0]
    assert [r["id"] for r in coffee if r["copy"]] == ["coffee.png"] and coffee[0]["flip"]


def test_post_copies(folder, tmp_path):
    """The service answers the same query: an upload or an id; a vector or an unknown id is one clear 4xx."""
    from fastapi.testclient import TestClient

    from deepscope.serve.app import create_app

    bench, _, out = folder
    client = TestClient(create_app(str(out)))
    upload = bench.CV_EDITS["cv_all"](bench.whole_photo("camera"))[0]
    r = client.post("/copies", files={"image": ("camera.webp", upload, "image/webp")}, data={"k": "4"})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["copies"] == 1 and j["results"][0]["id"] == "camera.png" and j["results"][0]["tier"] == "edited"
    assert j["results"][0]["flip"] is True and j["results"][0]["image"] == "/images/camera.png"
    r = client.post("/copies", json={"id": "astronaut--jpeg60.jpg", "k": 5})
    assert r.status_code == 200 and [x["id"] for x in r.json()["results"] if x["copy"]] == ["astronaut.png"], r.text
    assert client.post("/copies", json={"vector": [0.0] * 4}).status_code == 422
    assert client.post("/copies", json={"id": "no-such.png"}).status_code == 404


def test_a_folder_without_thumbnails_is_one_error_line(folder, capsys, tmp_path):
    """Copies are checked on the thumbnails: without a thumbs stage, one line and exit 2 (no model loaded)."""
    import json

    _, data, out = folder
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["stages"].pop("thumbs")
    (bare / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = lines(capsys, "query", bare, "--image", data / "camera.png", "--copies")
    assert code == 2 and len(err) == 1 and "[thumbs]" in err[0], err
    code, _, err = lines(capsys, "query", out, "--batch", data / "x.parquet", "--copies")
    assert code == 2 and len(err) == 1 and "--copies goes with" in err[0], err
    code, _, err = lines(capsys, "query", out, "--images", data, "--copies")
    assert code == 2 and len(err) == 1 and "--images needs --out" in err[0], err
    code, _, err = lines(capsys, "query", out, "--images", data)
    assert code == 2 and len(err) == 1 and "--images goes with --copies" in err[0], err


def same_answer(j):  # a copies answer without its timing
    return [(r["id"], r["copy"], r["tier"], r["why"]) for r in j["results"]], j["copies"], j["candidates"]


def test_the_explorer_answers_copies_as_the_service_does(folder):
    """POST /api/copies (the explorer) is the service's POST /copies: the same candidates, decisions and reasons."""
    from fastapi.testclient import TestClient

    from deepscope.serve.app import create_app
    from deepscope.serve.explorer import create_explorer

    bench, _, out = folder
    service, explorer = TestClient(create_app(str(out))), TestClient(create_explorer(str(out)))
    upload = bench.CV_EDITS["cv_all"](bench.whole_photo("camera"))[0]
    answers = []
    for client, path in ((service, "/copies"), (explorer, "/api/copies")):
        up = client.post(path, files={"image": ("camera.webp", upload, "image/webp")}, data={"k": "4"})
        by_id = client.post(path, json={"id": "coffee--flip.jpg", "k": 5})
        assert up.status_code == 200 and by_id.status_code == 200, (up.text, by_id.text)
        answers.append((same_answer(up.json()), same_answer(by_id.json())))
        assert client.post(path, json={"vector": [0.0] * 4}).status_code == 422
    assert answers[0] == answers[1]
    (up_rows, up_copies, _), (id_rows, _, _) = answers[1]
    assert up_copies == 1 and up_rows[0][:3] == ("camera.png", True, "edited")
    assert [r[0] for r in id_rows if r[1]] == ["coffee.png"]


def test_copies_in_the_explorer_and_the_service_page_in_chromium(folder):
    """A user's path: an image's page, `copies of this`, the copies framed with their reasons (the same as the
    API's); an upload with `copies of it` on the explorer's search view and on the service's page."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from test_app import serve
    from test_knn import chromium, console_errors

    from deepscope.serve.app import create_app
    from deepscope.serve.explorer import create_explorer

    bench, _, out = folder
    upload = out.parent / "camera-copy.webp"
    upload.write_bytes(bench.CV_EDITS["cv_all"](bench.whole_photo("camera"))[0])
    servers = [serve(create_explorer(str(out))), serve(create_app(str(out)))]
    (_, _, port), (_, _, service_port) = servers
    driver = chromium()

    def figures(where):  # (id, class, caption), read in one script
        return driver.execute_script(f"return [...document.querySelectorAll('{where} figure')].map(f => "
                                     "[f.dataset.id || f.querySelector('img').title, f.className, f.querySelector('figcaption').textContent])")
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/?view=image&id=coffee--flip.jpg")
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "image")
        driver.find_element(By.ID, "copies-of").click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "search" and figures("#results"))
        assert "copies=1" in driver.current_url
        want = httpx.post(f"http://127.0.0.1:{port}/api/copies", json={"id": "coffee--flip.jpg", "k": 5}, timeout=60).json()
        shown = figures("#results")
        assert [f[0] for f in shown] == [r["id"] for r in want["results"]]
        assert [f[1] for f in shown] == ["tile copy" if r["copy"] else "tile other" for r in want["results"]]
        assert shown[0][0] == "coffee.png" and shown[0][2] == f"copy, edited: {want['results'][0]['why']}"
        assert all(f[2].startswith("not a copy: ") for f in shown[1:])
        assert driver.find_element(By.ID, "said").text.startswith(f"1 of {want['candidates']} candidates are copies")
        # an upload from the search view
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(upload))
        Select(driver.find_element(By.CSS_SELECTOR, "#upload select[name=what]")).select_by_value("copies")
        driver.find_element(By.CSS_SELECTOR, "#upload button").click()
        wait.until(lambda d: figures("#results")[:1] and figures("#results")[0][0] == "camera.png")
        assert figures("#results")[0][1] == "tile copy" and sum(f[1] == "tile copy" for f in figures("#results")) == 1
        assert console_errors(driver) == []
        # the service's own page
        driver.get(f"http://127.0.0.1:{service_port}/")
        driver.find_element(By.NAME, "image").send_keys(str(upload))
        Select(driver.find_element(By.NAME, "what")).select_by_value("copies")
        driver.find_element(By.CSS_SELECTOR, "#f button").click()
        wait.until(lambda d: figures("#out"))
        shown = figures("#out")
        assert shown[0][:2] == ["camera.png", "copy"] and [f[1] for f in shown].count("copy") == 1
        assert "1 of" in driver.find_element(By.ID, "about").text
        assert console_errors(driver) == []
    finally:
        driver.quit()
        for srv, thread, _ in servers:
            srv.should_exit = True
            thread.join(10)


def test_the_thumbnails_map_by_hand(tmp_path):
    """index/knn.py: _thumb_rows on two parts (the first written before `file_bytes` existed), an id written
    again by a later part (the later row wins), an id without a thumbnail, and the index's own order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepscope.index.knn import _thumb_rows

    first, second = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    pq.write_table(pa.table({"id": ["x", "y", "z"], "pixel_hash": ["hx", None, "hz"], "width": [10, 20, 30], "height": [1, 2, 3]}), first)
    pq.write_table(pa.table({"id": ["w", "y"], "pixel_hash": ["hw", "hy2"], "width": [4, 5], "height": [6, 7],
                             "file_bytes": pa.array([None, 900], pa.int64())}), second)

    class Store:
        class loc:
            read_table = staticmethod(lambda f, columns=None: pq.read_table(f, columns=columns))

        def parts(self, stage):
            return {"part-2": {"file": second}, "part-1": {"file": first}} if stage == "thumbs" else {}

    got = _thumb_rows(Store(), np.array(["y", "missing", "z", "w", "x"], object))
    want = {"file": [second, "", first, second, first], "row": [1, -1, 2, 0, 0], "hash": ["hy2", "", "hz", "hw", "hx"],
            "pixels": [35, 0, 90, 24, 10], "file_bytes": [900, 0, 0, 0, 0]}
    assert {k: list(v) for k, v in got.items()} == want
    assert got["row"].dtype == got["pixels"].dtype == got["file_bytes"].dtype == np.int64
    assert _thumb_rows(Store(), np.array(["missing"], object)) is None


def test_the_query_mirrored_is_searched_too(folder):
    """With a pixels index, the k nearest of the query's mirror image in the pixels space are candidates too
    (`mirrored_rank`): exactly the k nearest by a direct computation over the folder's pixel vectors; a
    flipped copy's original is the first of them."""
    import numpy as np

    from deepscope.index import copies as C
    from deepscope.index.knn import indexed_spaces
    from deepscope.index.search import Searcher
    from deepscope.io.store import Store
    from deepscope.stages.knn import KnnConfig

    _, _, out = folder
    store = Store(str(out))
    searchers = {s: Searcher(store, s) for s in indexed_spaces(store)}
    thumbs = C.Thumbs(store, searchers["features"].ids)
    query = C.query_of_id(store, "coffee--flip.jpg", searchers, thumbs)
    rows = C.find_copies(searchers, thumbs, query, 3, KnnConfig())[0]
    ids = [i for i in searchers["pixels"].ids if i != "coffee--flip.jpg"]
    x = searchers["pixels"].vectors_of(ids).astype(np.float64)
    m = C.mirrored(query.vectors["pixels"]).astype(np.float64)
    assert searchers["pixels"].metric == "l2"
    want = [ids[n] for n in np.argsort(((x - m) ** 2).sum(1), kind="stable")[:3]]
    got = sorted((r["mirrored_rank"], r["id"]) for r in rows if r.get("mirrored_rank"))
    assert [i for _, i in got] == want and [r for r, _ in got] == [1, 2, 3]
    assert want[0] == "coffee.png"
    flipped = m.reshape(3, 32, 32)[:, :, ::-1].reshape(-1)
    assert np.array_equal(flipped, query.vectors["pixels"])  # the mirror of the mirror


def test_verification_in_many_tasks_decides_as_in_one(folder, tmp_path, capsys):
    """The knn stage's pairs (every candidate verified: min_sketch -1) cut into tasks of 3, ordered for locality
    (K.local_order), give every candidate the same evidence as one task: the decisions do not depend on how the
    pairs are ordered and cut."""
    import pyarrow.parquet as pq

    from deepscope.runner import run_stage

    _, _, out = folder
    tables, logs = [], []
    for chunk in (3, 2000):
        copy = tmp_path / f"chunk{chunk}"
        shutil.copytree(out, copy)
        (copy / "knn/candidates.parquet").unlink()
        Store(copy).drop_parts_except("knn/verified", set())  # the fixture's run's evidence: every pair verified here
        run_stage(str(copy), "knn", {"k": 5, "min_sketch": -1, "verify_chunk": chunk})
        logs.append([line for line in capsys.readouterr().err.splitlines() if "thumbnails to prepare" in line])
        tables.append(pq.read_table(copy / "knn/candidates.parquet").to_pandas().sort_values(["a", "b"]).reset_index(drop=True))
    many, one = tables
    assert many.verified.sum() >= 12 and many.accepted.sum() >= 2  # tasks of 3: several; copies among the pairs
    assert many.equals(one)
    assert "in 1 verification task:" in logs[1][0] and "verification tasks:" in logs[0][0], logs


def test_an_interrupted_verification_resumes_from_the_finished_tasks(folder, tmp_path, capsys):
    """The verification commits each task's evidence (knn/verified) as it finishes: a stage stopped after some
    tasks verifies only the other pairs when run again, and decides every pair as an uninterrupted run does;
    another verification setting verifies every pair again."""
    import pyarrow.parquet as pq

    from deepscope.index.knn import VERIFIED
    from deepscope.runner import run_stage

    _, _, out = folder
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    Store(copy).drop_parts_except(VERIFIED, set())
    settings = {"k": 5, "min_sketch": -1, "verify_chunk": 3}

    def again(**more):
        Store(copy).update_summary("knn", None)  # as a stage stopped midway leaves it
        run_stage(str(copy), "knn", {**settings, **more})
        log = capsys.readouterr().err
        return log, pq.read_table(copy / "knn/candidates.parquet").to_pandas().sort_values(["a", "b"]).reset_index(drop=True)

    _, whole = again()
    store = Store(copy)
    parts = sorted(store.parts(VERIFIED))
    assert len(parts) >= 4 and sum(e["rows"] for e in store.parts(VERIFIED).values()) == whole.verified.sum()
    kept = set(parts[::2])  # as if the other tasks had not finished
    store.drop_parts_except(VERIFIED, kept)
    done = sum(e["rows"] for e in store.parts(VERIFIED).values())
    log, resumed = again()
    assert f"knn: {done} pairs verified by an earlier run of these settings (knn/verified), {whole.verified.sum() - done} to verify" in log
    assert resumed.equals(whole)
    assert Store(copy).summary("knn")["duplicates"]["verification"]["earlier"] == done
    assert f"{done} of the pairs were verified by an earlier run" in (copy / "report/index.html").read_text()
    log, stricter = again(min_explained=1.0)  # another setting: nothing reused, and the decisions change
    assert "by an earlier run" not in log
    assert stricter.accepted.sum() < whole.accepted.sum()

"""The explorer's tables: every per-image field the stages wrote, joined once into a DuckDB file on
local disk, and the queries the app's pages ask (gallery, image, units, map, thumbnails).

Nothing is held in Python per image: the joined tables live in an on-disk DuckDB database under a
temporary folder, DuckDB runs with a memory limit and spills to disk, and originals, patches and
thumbnails are read one part at a time. Inputs are the committed parts and recorded files of the
output folder, read through its filesystem (local or fsspec: s3:// works the same), never a path
a client sends.
"""
from __future__ import annotations

import functools
import io
import os
import re
import tempfile
import threading
from collections import OrderedDict

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.io.store import Store

THUMBS = "thumbs"  # the thumbnail stage (issue 24): thumbs/<part>.parquet, schemas below
THUMB_COLUMNS = {"id": pa.string(), "path": pa.string(), "thumb": pa.binary(), "width": pa.int32(),
                 "height": pa.int32(), "pixel_hash": pa.string()}
MAX_PER_PAGE = 500


class BadQuery(ValueError):
    """A query the tables cannot answer (unknown field, bad value): the server answers 400."""


def _name(method: str) -> str:
    """A saliency method as part of a column name: smoothgrad(backprop) -> smoothgrad_backprop."""
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")


def _q(col: str) -> str:
    return '"' + col.replace('"', '""') + '"'


class Tables:
    """The output folder's per-image tables in DuckDB; thread-safe (one cursor per call)."""

    def __init__(self, out: str, workdir: str | None = None, memory_limit: str = "384MB", threads: int = 2):
        self.store = Store(out)
        if not self.store.manifest.get("stages") and not self.store.manifest.get("files"):
            raise UserError(f"{out} is not a deepscope output folder (no manifest.json with results)")
        self.loc = self.store.loc
        self._tmp = tempfile.TemporaryDirectory(prefix="deepscope-app-", dir=workdir)
        self.db = duckdb.connect(os.path.join(self._tmp.name, "explorer.duckdb"))
        self._exec(f"SET memory_limit='{memory_limit}'")
        self._exec(f"SET threads={int(threads)}")
        self._exec(f"SET temp_directory='{os.path.join(self._tmp.name, 'spill')}'")
        self._exec("SET preserve_insertion_order=false")
        self.sources: dict[str, bool] = {}
        self._located: dict[str, list[str]] = {}
        self._cache: OrderedDict = OrderedDict()  # (file, column) -> that column of one part
        self._lock = threading.Lock()
        self._build()
        self.fields = self._fields()

    def _exec(self, sql: str, params=None) -> list:
        return self.db.execute(sql, params or []).fetchall()  # fetched: DuckDB refuses new work over an open result

    # -- building ---------------------------------------------------------------
    def _fs(self):
        if not self.loc.remote:
            return None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.loc.fs))

    def _path(self, rel: str) -> str:
        return self.loc._key(rel) if self.loc.remote else self.loc.full(rel)

    def _dataset(self, rels: list[str], schema: pa.Schema | None = None) -> ds.Dataset:
        return ds.dataset([self._path(r) for r in rels], format="parquet", filesystem=self._fs(), schema=schema)

    def _part_files(self, stage: str) -> list[str]:
        return [e["file"] for _, e in sorted(self.store.parts(stage).items())]

    def _file(self, rel: str) -> bool:
        return rel in self.store.manifest.get("files", {}) and self.loc.exists(rel)

    def _files(self, prefix: str) -> list[str]:
        return sorted(r for r in self.store.manifest.get("files", {}) if r.startswith(prefix) and r.endswith(".parquet"))

    def _register(self, name: str, rels: list[str], columns: dict[str, pa.DataType]) -> bool:
        """A view over parts: only the named columns are ever read (a part that lacks one: nulls)."""
        if not rels:
            return False
        if not self.loc.remote:  # DuckDB's own reader: it streams within the memory limit
            files = ", ".join("'" + self._path(r).replace("'", "''") + "'" for r in rels)
            try:
                self._exec(f"CREATE TEMP VIEW src_{name} AS SELECT {', '.join(map(_q, columns))} "
                           f"FROM read_parquet([{files}], union_by_name = true)")
                self.sources[name] = True
                return True
            except duckdb.BinderException:  # a column no part has: the arrow reader gives it as nulls
                pass
        schema = pa.schema([pa.field(k, t) for k, t in columns.items()])
        self.db.register(f"src_{name}", self._dataset(rels, schema))
        self.sources[name] = True
        return True

    def _table(self, table: str, name: str, rels: list[str], schema: pa.Schema) -> None:
        """A table of these files' rows; none: an empty one of the same schema (io/schemas.py's, not a copy)."""
        if not self._register(name, rels, {f.name: f.type for f in schema}):
            self.db.register(f"src_{name}", schema.empty_table())
        self._exec(f"CREATE TABLE {table} AS SELECT * FROM src_{name}")

    def _build(self):
        s = schemas
        base = None
        for stage, cols in (("features", ["id", "path", "label"]), ("pixels", ["id", "path", "label"]),
                            ("saliency", ["id", "path", "label"]), ("robustness", ["id", "path", "label"]),
                            (THUMBS, ["id", "path"])):
            if self._register(f"base_{stage}", self._part_files(stage), {c: pa.string() for c in cols}):
                base = f"base_{stage}"
                break
        errors = self._part_files("errors")
        has_errors = self._register("errors", errors, {f.name: f.type for f in s.ERRORS})
        label = "label" if base and base != f"base_{THUMBS}" else "NULL::VARCHAR"
        parts = []
        if base:
            parts.append(f"SELECT id, any_value(path) AS path, any_value({label}) AS label FROM src_{base} GROUP BY id")
        if has_errors:
            parts.append("SELECT id, any_value(path), NULL::VARCHAR FROM src_errors GROUP BY id")
        if not parts:
            raise UserError(f"{self.store.url} has no per-image results to explore (features, pixels, saliency, ...)")
        self._exec(f"CREATE TEMP VIEW ids AS SELECT id, any_value(path) AS path, any_value(label) AS label "
                   f"FROM ({' UNION ALL '.join(parts)}) GROUP BY id")
        select, joins = ["i.id", "i.path", "i.label"], []

        if has_errors:
            joins.append("LEFT JOIN (SELECT id, string_agg(stage || ': ' || error, '; ') AS error FROM src_errors "
                         "GROUP BY id) e USING (id)")
            select.append("e.error")
        if self._file("knn/images.parquet"):
            self._register("knn", ["knn/images.parquet"], {f.name: f.type for f in s.KNN_IMAGES})
            joins.append("LEFT JOIN src_knn k USING (id)")
            select += [f"k.{_q(c)}" for c in ("uniqueness", "group", "group_size", "duplicate_of", "label_flagged", "majority_label",
                                               "majority_share", "own_label_share", "nearest_id", "nearest_distance")]
        sal = self._part_files("saliency")
        if sal:
            cols = {c: pa.string() for c in ("id", "method", "target_name")}
            cols.update({"pred": pa.int32(), "target": pa.int32(), "score": pa.float32(), "entropy": pa.float32(),
                         "top_mass": pa.float32(), "com_x": pa.float32(), "com_y": pa.float32()})
            self._register("saliency", sal, cols)
            methods = [r[0] for r in self.db.execute("SELECT DISTINCT method FROM src_saliency ORDER BY 1").fetchall()]
            self.saliency_methods = methods
            self._locate("saliency_at", sal, ["id", "method"])
            agg = ["any_value(pred) AS pred", "any_value(target_name) FILTER (WHERE target = pred) AS pred_name"]
            for m in methods:
                for stat in ("entropy", "top_mass", "com_x", "com_y"):
                    agg.append(f"any_value({stat}) FILTER (WHERE method = '{m.replace(chr(39), chr(39) * 2)}') "
                               f"AS {_q(f'saliency_{_name(m)}_{stat}')}")
            joins.append(f"LEFT JOIN (SELECT id, {', '.join(agg)} FROM src_saliency GROUP BY id) sa USING (id)")
            select += ["sa.* EXCLUDE (id)"]
        else:
            self.saliency_methods = []
        rob = self._part_files("robustness")
        if rob:
            self._register("robustness", rob, {"id": pa.string(), "pred": pa.int32(), "margin": pa.float32(),
                                               "min_eps": pa.float32(), "adv_pred": pa.int32(),
                                               "adversarial": pa.string()})
            joins.append("LEFT JOIN (SELECT id, any_value(pred) AS robust_pred, any_value(margin) AS margin, "
                         "any_value(min_eps) AS min_eps, any_value(adv_pred) AS adv_pred, "
                         "any_value(adversarial) AS adversarial FROM src_robustness GROUP BY id) r USING (id)")
            select += ["r.margin", "r.min_eps", "r.adv_pred", "r.adversarial"]
            if not sal:
                select.append("r.robust_pred AS pred")
        if self._file("map/coords.parquet"):
            self._register("map", ["map/coords.parquet"], {f.name: f.type for f in s.MAP_COORDS})
            joins.append("LEFT JOIN src_map m USING (id)")
            select += ["coalesce(m.tsne_x, m.pca_x) AS map_x", "coalesce(m.tsne_y, m.pca_y) AS map_y"]
        thumbs = self._part_files(THUMBS)
        if thumbs:
            self._register("thumbs", thumbs, {k: v for k, v in THUMB_COLUMNS.items() if k != "thumb"})
            self._locate("thumb_at", thumbs, ["id"])
            joins.append("LEFT JOIN (SELECT id, any_value(width) AS width, any_value(height) AS height, "
                         "any_value(pixel_hash) AS pixel_hash FROM src_thumbs GROUP BY id) th USING (id)")
            select += ["th.width", "th.height"]
        self.has_thumbs = bool(thumbs)
        self._exec(f"CREATE TABLE images AS SELECT (row_number() OVER (ORDER BY i.id) - 1)::INT AS row, "
                   f"{', '.join(select)} FROM ids i {' '.join(joins)} ORDER BY i.id")
        self._exec("CREATE UNIQUE INDEX images_id ON images (id)")
        self._exec("CREATE UNIQUE INDEX images_row ON images (row)")
        self.n = self._exec("SELECT count(*) FROM images")[0][0]

        self.spaces = []
        for space in ("features", "pixels"):
            rels = self._part_files(f"knn/{space}")
            if rels:
                self._register(f"graph_{space}", rels, {"id": pa.string(), "neighbor_ids": pa.list_(pa.string()),
                                                        "distances": pa.list_(pa.float32())})
                self._exec(f"CREATE TABLE graph_{space} AS SELECT * FROM src_graph_{space}")
                self._exec(f"CREATE INDEX graph_{space}_id ON graph_{space} (id)")
                self.spaces.append(space)
        if self._file("knn/duplicates.parquet"):
            self._register("dups", ["knn/duplicates.parquet"], {f.name: f.type for f in s.KNN_DUPLICATES})
            self._exec("CREATE TABLE dups AS SELECT * FROM src_dups")
        self._build_units()

    def _locate(self, name: str, rels: list[str], keys: list[str]) -> None:
        """A table (keys..., file, row): where each row of the parts is, to read it back alone."""
        self._exec(f"CREATE TABLE {name} ({', '.join(k + ' VARCHAR' for k in keys)}, file INT, row INT)")
        for n, rel in enumerate(rels):
            t = self._read(rel, keys)
            self.db.register("one_part", t.append_column("file", pa.array(np.full(t.num_rows, n, np.int32)))
                             .append_column("row", pa.array(np.arange(t.num_rows, dtype=np.int32))))
            self._exec(f"INSERT INTO {name} SELECT * FROM one_part")
            self.db.unregister("one_part")
        self._exec(f"CREATE INDEX {name}_id ON {name} (id)")
        self._located[name] = rels

    def _build_units(self):
        top = self._files("patches/top-")
        self.patch_files = {}
        if top:
            cols = {f.name: f.type for f in schemas.PATCHES if f.name != "patch"}
            self._register("patches", top, cols)
            self._exec("CREATE TABLE patches AS SELECT * FROM src_patches")
            self._exec("CREATE INDEX patches_id ON patches (id)")
            for rel in top:
                for layer in set(self._read(rel, ["layer"]).column("layer").to_pylist()):
                    self.patch_files[layer] = rel
        else:
            self._exec("CREATE TABLE patches (layer VARCHAR, channel INT, rank INT, id VARCHAR, path VARCHAR, "
                       "score FLOAT, \"row\" INT, col INT, x0 INT, y0 INT, x1 INT, y1 INT)")
        self._table("concepts", "iou", self._files("dissection/iou-"), schemas.DISSECTION)
        self._table("dissect_top", "dtop", self._files("dissection/top-"), schemas.DISSECTION_TOP_IMAGES)
        vis = self._part_files("visualize")
        if vis:
            self._register("vis", vis, {f.name: f.type for f in schemas.VISUALIZE})
            self._exec("CREATE TABLE pictures AS SELECT layer, target AS unit, image FROM src_vis WHERE kind = 'unit'")
        else:
            self._exec("CREATE TABLE pictures (layer VARCHAR, unit INT, image VARCHAR)")
        self._exec("""CREATE TABLE units AS
            WITH p AS (SELECT layer, channel AS unit, count(*) AS patches, max(score) AS top_score FROM patches GROUP BY ALL),
                 c AS (SELECT layer, unit, concept, category, iou, detector FROM concepts WHERE rank = 1),
                 v AS (SELECT layer, unit, any_value(image) AS picture FROM pictures GROUP BY ALL),
                 u AS (SELECT layer, unit FROM p UNION SELECT layer, unit FROM c UNION SELECT layer, unit FROM v)
            SELECT u.layer, u.unit, coalesce(p.patches, 0) AS patches, p.top_score, c.concept, c.category, c.iou,
                   c.detector, v.picture
            FROM u LEFT JOIN p USING (layer, unit) LEFT JOIN c USING (layer, unit) LEFT JOIN v USING (layer, unit)
            ORDER BY layer, unit""")

    def _read(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return self.loc.read_table(rel, columns=columns)

    def _fields(self) -> list[dict]:
        """Every column of the gallery table a client may filter and sort on, with its kind."""
        out = []
        for name, typ in self._exec("SELECT column_name, data_type FROM information_schema.columns "
                                         "WHERE table_name = 'images' ORDER BY ordinal_position"):
            if name in ("row", "path", "adversarial"):
                continue
            kind = ("bool" if typ == "BOOLEAN" else "number" if typ in ("FLOAT", "DOUBLE", "INTEGER", "BIGINT")
                    else "string")
            f = {"name": name, "kind": kind}
            if kind == "string" and name not in ("id", "nearest_id", "error"):
                vals = self._sql(f"SELECT DISTINCT {_q(name)} FROM images WHERE {_q(name)} IS NOT NULL "
                                 f"ORDER BY 1 LIMIT 201")
                if len(vals) <= 200:
                    f["values"] = [v[0] for v in vals]
            out.append(f)
        return out

    # -- queries ------------------------------------------------------------------
    def _sql(self, sql: str, params=None):
        cur = self.db.cursor()  # one cursor per call: requests run on several threads
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()

    def _arrow(self, sql: str, params=None) -> pa.Table:
        cur = self.db.cursor()
        try:
            return cur.sql(sql, params=params or None).to_arrow_table()
        finally:
            cur.close()

    def where(self, query: list[tuple[str, str]]) -> tuple[str, list]:
        """Filters from the URL's (key, value) pairs: FIELD=v (repeated: any of), FIELD.min / FIELD.max,
        FIELD.null=true|false, box=x0,y0,x1,y1 or lasso=x0,y0,x1,y1,x2,y2,... (on the map), q=text
        (id or path contains)."""
        kinds = {f["name"]: f["kind"] for f in self.fields}
        eq: dict[str, list] = {}
        clauses, params = [], []
        for key, value in query:
            if key in ("sort", "page", "per", "view"):
                continue
            if key == "q":
                clauses.append("(contains(lower(id), lower(?)) OR contains(lower(path), lower(?)))")
                params += [value, value]
                continue
            if key == "box":
                if "map_x" not in kinds:
                    raise BadQuery("this folder has no map: run `deepscope map OUT` first")
                try:
                    x0, y0, x1, y1 = (float(v) for v in value.split(","))
                except ValueError:
                    raise BadQuery(f"box must be x0,y0,x1,y1 (four numbers), got {value!r}") from None
                clauses.append("map_x BETWEEN ? AND ? AND map_y BETWEEN ? AND ?")
                params += [min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)]
                continue
            if key == "lasso":
                if "map_x" not in kinds:
                    raise BadQuery("this folder has no map: run `deepscope map OUT` first")
                clause, more = lasso_clause(value)
                clauses.append(clause)
                params += more
                continue
            name, _, op = key.partition(".")
            if name not in kinds:
                raise BadQuery(f"unknown field {name!r}; fields: {', '.join(kinds)}")
            kind = kinds[name]
            if op == "null":
                if value not in ("true", "false"):
                    raise BadQuery(f"{key} must be true or false, got {value!r}")
                clauses.append(f"{_q(name)} IS {'' if value == 'true' else 'NOT '}NULL")
            elif op in ("min", "max"):
                if kind != "number":
                    raise BadQuery(f"{name} is not a number: {key} does not apply")
                clauses.append(f"{_q(name)} {'>=' if op == 'min' else '<='} ?")
                params.append(self._value(name, kind, value))
            elif op == "":
                eq.setdefault(name, []).append(self._value(name, kind, value))
            else:
                raise BadQuery(f"unknown filter {key!r}: use {name}=, {name}.min=, {name}.max= or {name}.null=")
        for name, vals in eq.items():
            clauses.append(f"{_q(name)} IN ({', '.join('?' * len(vals))})")
            params += vals
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @staticmethod
    def _value(name: str, kind: str, value: str):
        if kind == "bool":
            if value not in ("true", "false"):
                raise BadQuery(f"{name} must be true or false, got {value!r}")
            return value == "true"
        if kind == "number":
            try:
                v = float(value)
            except ValueError:
                raise BadQuery(f"{name} must be a number, got {value!r}") from None
            if not np.isfinite(v):
                raise BadQuery(f"{name} must be a finite number, got {value!r}")
            return v
        return value

    def order(self, sort: str | None) -> str:
        """sort=FIELD (ascending) or -FIELD (descending); missing values last; ties by id."""
        if not sort:
            return " ORDER BY row"  # = id order (row numbers follow the ids)
        desc = sort.startswith("-")
        name = sort.lstrip("-")
        if name not in {f["name"] for f in self.fields}:
            raise BadQuery(f"cannot sort by unknown field {name!r}")
        return f" ORDER BY {_q(name)} {'DESC' if desc else 'ASC'} NULLS LAST, id"

    def gallery(self, query: list[tuple[str, str]]) -> dict:
        args = dict(query)
        try:
            page, per = int(args.get("page", 0)), int(args.get("per", 60))
        except ValueError:
            raise BadQuery("page and per must be whole numbers") from None
        if page < 0 or not 1 <= per <= MAX_PER_PAGE:
            raise BadQuery(f"page must be >= 0 and per between 1 and {MAX_PER_PAGE}")
        where, params = self.where(query)
        order = self.order(args.get("sort")).replace(", id", ", row")
        page_sql = f"{order} LIMIT {per} OFFSET {page * per}"
        if "lasso" in args:  # an expensive filter: evaluated once, for the count and the page
            sort = args.get("sort", "").lstrip("-")
            picked = self._sql(f"WITH sel AS MATERIALIZED (SELECT row{', ' + _q(sort) if sort else ''} "
                               f"FROM images{where}) SELECT (SELECT count(*) FROM sel), row FROM sel{page_sql}", params)
            total = picked[0][0] if picked else self._sql(f"SELECT count(*) FROM images{where}", params)[0][0]
            rows = [r[1] for r in picked]
        else:
            total = self._sql(f"SELECT count(*) FROM images{where}", params)[0][0]
            # the page's row numbers first (row follows id, so it breaks ties as id does), then only
            # those rows whole, by index: 5-7x faster at 1,000,000 images than sorting whole rows
            rows = [r[0] for r in self._sql(f"SELECT row FROM images{where}{page_sql}", params)]
        got = {r["row"]: r for r in self._arrow(
            f"SELECT * EXCLUDE (path) FROM images WHERE row IN ({', '.join(map(str, rows)) or 'NULL'})").to_pylist()}
        return {"total": total, "page": page, "per": per,
                "rows": [_clean({k: v for k, v in got[r].items() if k != "row"}) for r in rows]}

    def image(self, image_id: str) -> dict | None:
        rows = self._arrow("SELECT * FROM images WHERE id = ?", [image_id]).to_pylist()
        if not rows:
            return None
        me = _clean(rows[0])
        me["neighbors"] = {}
        for space in self.spaces:
            got = self._sql(f"SELECT neighbor_ids, distances FROM graph_{space} WHERE id = ?", [image_id])
            if got:
                ids, dist = got[0]
                labels = dict(self._sql("SELECT id, label FROM images WHERE id IN (SELECT unnest(?))", [ids]))
                me["neighbors"][space] = [{"id": i, "distance": d, "label": labels.get(i)} for i, d in zip(ids, dist)]
        me["duplicates"] = []
        if "group" in me and me.get("group"):
            members = self._sql("SELECT DISTINCT x FROM (SELECT a AS x FROM dups WHERE \"group\" = ? UNION "
                                "SELECT b FROM dups WHERE \"group\" = ?) WHERE x <> ? ORDER BY x",
                                [me["group"], me["group"], image_id])
            direct = dict(self._sql("SELECT CASE WHEN a = ? THEN b ELSE a END, min(distance) FROM dups "
                                    "WHERE a = ? OR b = ? GROUP BY 1", [image_id] * 3))
            me["duplicates"] = [{"id": m, "distance": direct.get(m)} for (m,) in members]
            # was an image kept in this group (not without thumbnails: no sizes to choose by)?
            me["group_chosen"] = bool(self._sql("SELECT 1 FROM images WHERE \"group\" = ? AND duplicate_of IS NOT NULL "
                                                "LIMIT 1", [me["group"]]))
        me["saliency"] = self.saliency_methods if self.saliency_methods else []
        units = self._arrow("SELECT p.layer, p.channel AS unit, p.rank, p.score, c.concept, c.iou FROM patches p "
                            "LEFT JOIN concepts c ON c.layer = p.layer AND c.unit = p.channel AND c.rank = 1 "
                            "WHERE p.id = ? ORDER BY p.score DESC LIMIT 24", [image_id]).to_pylist()
        me["units"] = units
        return me

    def units(self, query: list[tuple[str, str]]) -> dict:
        args = dict(query)
        layers = [r[0] for r in self._sql("SELECT DISTINCT layer FROM units ORDER BY 1")]
        layer = args.get("layer") or (layers[0] if layers else None)
        if layer is not None and layer not in layers:
            raise BadQuery(f"unknown layer {layer!r}; layers: {', '.join(layers)}")
        sort = args.get("sort", "unit")
        cols = ("unit", "iou", "concept", "category", "top_score", "patches")
        if sort.lstrip("-") not in cols:
            raise BadQuery(f"units sort by one of {', '.join(cols)}")
        order = f"{_q(sort.lstrip('-'))} {'DESC' if sort.startswith('-') else 'ASC'} NULLS LAST, unit"
        rows = self._arrow(f"SELECT * FROM units WHERE layer = ? ORDER BY {order}", [layer]).to_pylist()
        tops = self._arrow("SELECT channel AS unit, list(rank ORDER BY rank) AS ranks, list(id ORDER BY rank) AS ids "
                           "FROM patches WHERE layer = ? AND rank < 6 GROUP BY channel", [layer]).to_pylist()
        by_unit = {t["unit"]: t for t in tops}
        for r in rows:
            t = by_unit.get(r["unit"])
            r["top"] = [{"rank": k, "id": i} for k, i in zip(t["ranks"], t["ids"])] if t else []
        return {"layers": layers, "layer": layer, "units": [_clean(r) for r in rows]}

    def unit(self, layer: str, unit: int) -> dict | None:
        head = self._arrow("SELECT * FROM units WHERE layer = ? AND unit = ?", [layer, unit]).to_pylist()
        if not head:
            return None
        me = _clean(head[0])
        me["patches"] = self._arrow("SELECT p.rank, p.id, p.score, i.label, p.x0, p.y0, p.x1, p.y1 FROM patches p "
                                    "LEFT JOIN images i USING (id) WHERE p.layer = ? AND p.channel = ? ORDER BY p.rank",
                                    [layer, unit]).to_pylist()
        me["dissection_top"] = self._arrow("SELECT rank, id, score FROM dissect_top WHERE layer = ? AND unit = ? "
                                           "ORDER BY rank", [layer, unit]).to_pylist()
        me["concepts"] = self._arrow("SELECT rank, concept, category, iou FROM concepts WHERE layer = ? AND unit = ? "
                                     "ORDER BY rank", [layer, unit]).to_pylist()
        return me

    def patch(self, layer: str, unit: int, rank: int) -> bytes | None:
        rel = self.patch_files.get(layer)
        if rel is None:
            return None
        t = self._dataset([rel]).to_table(columns=["patch"], filter=(ds.field("layer") == layer) &
                                          (ds.field("channel") == unit) & (ds.field("rank") == rank))
        return t.column("patch")[0].as_py() if t.num_rows else None

    def path_of(self, image_id: str) -> str | None:
        got = self._sql("SELECT path FROM images WHERE id = ?", [image_id])
        return got[0][0] if got else None

    def adversarial(self, image_id: str) -> str | None:
        if "robustness" not in self.sources:
            return None
        got = self._sql("SELECT adversarial FROM images WHERE id = ?", [image_id])
        return got[0][0] if got else None

    def saliency_map(self, image_id: str, method: str) -> tuple[np.ndarray, int] | None:
        """The method's map of the image (side x side floats in [0, 1])."""
        got = self._sql("SELECT file, row FROM saliency_at WHERE id = ? AND method = ?", [image_id, method]) \
            if "saliency_at" in self._located else []
        if not got:
            return None
        value = self._column("saliency_at", got[0][0], "map")[got[0][1]].as_py()
        m = np.asarray(value, np.float32)
        side = int(round(np.sqrt(len(m))))
        return m.reshape(side, side), side

    # -- map -------------------------------------------------------------------------
    def map_points(self) -> tuple[dict, bytes]:
        """Every image's map position (float32 x, y) and label code (uint16), in gallery row order."""
        if "map_x" not in {f["name"] for f in self.fields}:
            return {"n": 0}, b""
        t = self._arrow("SELECT map_x, map_y, label FROM images ORDER BY row")
        labels = [r[0] for r in self._sql("SELECT label FROM images WHERE label IS NOT NULL GROUP BY label "
                                          "ORDER BY count(*) DESC, label LIMIT 65534")]
        import pyarrow.compute as pc

        x = t.column("map_x").to_numpy(zero_copy_only=False).astype(np.float32)
        y = t.column("map_y").to_numpy(zero_copy_only=False).astype(np.float32)
        code = pc.index_in(t.column("label"), value_set=pa.array(labels, pa.string()))  # null: no label
        c = (pc.fill_null(code, -1).to_numpy() + 1).astype(np.uint16)
        fin = np.isfinite(x) & np.isfinite(y)
        bounds = [float(x[fin].min()), float(y[fin].min()), float(x[fin].max()), float(y[fin].max())] if fin.any() else [0, 0, 1, 1]
        return {"n": len(x), "labels": labels, "bounds": bounds}, x.tobytes() + y.tobytes() + c.tobytes()

    def map_near(self, box: str, limit: int) -> list[dict]:
        where, params = self.where([("box", box)])
        return self._arrow(f"SELECT id, label, map_x AS x, map_y AS y FROM images{where} ORDER BY hash(id) LIMIT {int(limit)}",
                           params).to_pylist()

    # -- thumbnails --------------------------------------------------------------------
    def thumb(self, image_id: str) -> bytes | None:
        """The thumbnail the thumbs stage wrote (None: no thumbs part holds this id)."""
        if not self.has_thumbs:
            return None
        got = self._sql("SELECT file, row FROM thumb_at WHERE id = ?", [image_id])
        if not got:
            return None
        return self._column("thumb_at", got[0][0], "thumb")[got[0][1]].as_py()

    def _column(self, located: str, n: int, column: str) -> pa.ChunkedArray:
        """One column of one part, from a small cache (memory: a few parts, whatever the dataset)."""
        key = (located, n, column)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        col = self._read(self._located[located][n], [column]).column(column)
        with self._lock:
            self._cache[key] = col
            while sum(c.nbytes for c in self._cache.values()) > 48 * 2**20 and len(self._cache) > 1:
                self._cache.popitem(last=False)
        return col

    def close(self):
        self.db.close()
        self._tmp.cleanup()


def _clean(row: dict) -> dict:
    """JSON-safe: NaN and infinities become null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


@functools.lru_cache(maxsize=1024)  # small JPEGs: ~5 KB each, so ~5 MB whatever the dataset
def decoded_thumb(path: str, side: int = 160) -> bytes:
    """A thumbnail decoded from the original (outputs without a thumbs stage)."""
    from PIL import Image, ImageOps

    from deepscope.io.sources import read_bytes

    with Image.open(io.BytesIO(read_bytes(path, 256 * 2**20))) as im:
        im = ImageOps.exif_transpose(im)
        im.draft("RGB", (side, side))
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=82)
    return buf.getvalue()


LASSO_MAX_VERTICES = 512


def lasso_clause(value: str) -> tuple[str, list]:
    """SQL for "(map_x, map_y) inside the polygon x0,y0,x1,y1,...": its bounding box (which DuckDB
    prunes row groups with), then the even-odd rule, one crossing test per edge."""
    try:
        v = [float(t) for t in value.split(",")]
    except ValueError:
        raise BadQuery(f"lasso must be x0,y0,x1,y1,x2,y2,... (numbers), got {value[:80]!r}") from None
    if len(v) % 2 or not 3 <= len(v) // 2 <= LASSO_MAX_VERTICES or not all(np.isfinite(v)):
        raise BadQuery(f"lasso must be 3 to {LASSO_MAX_VERTICES} vertices x,y of finite numbers, "
                       f"got {len(v)} numbers")
    xs, ys = v[0::2], v[1::2]
    crossings = []
    for (xi, yi), (xj, yj) in zip(zip(xs, ys), zip(xs[1:] + xs[:1], ys[1:] + ys[:1])):
        if yi == yj:
            continue  # a horizontal edge is never crossed by a horizontal ray
        # floats formatted by repr: exact, and nothing but a number reaches the SQL
        crossings.append(f"((map_y < ({yi!r})) <> (map_y < ({yj!r})) AND "
                         f"map_x < ({xi!r}) + ({(xj - xi) / (yj - yi)!r}) * (map_y - ({yi!r})))::INT")
    if not crossings:
        return "FALSE", []
    box = "map_x BETWEEN ? AND ? AND map_y BETWEEN ? AND ?"
    return f"({box} AND ({' + '.join(crossings)}) % 2 = 1)", [min(xs), max(xs), min(ys), max(ys)]


"""Reading an OMOP CDM extract: a directory of CSV/Parquet files, a DuckDB file or a SQLite file, in chunks.

Column names are lower-cased; a table is found case-insensitively. Nothing here maps rows to events.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from screener.errors import ConnectorError

__all__ = ["VOCABULARIES", "OmopSource"]

SOURCE = "omop"
#: OMOP vocabulary_id -> canonical code system (others travel as ``local`` ``VOCAB:code``). RxNorm Extension
#: codes are OMOP's own, not RxNorm's, so they stay local.
VOCABULARIES = {
    "SNOMED": "SNOMED",
    "LOINC": "LOINC",
    "ICD10": "ICD10",
    "ICD10CM": "ICD10",
    "ICD10GM": "ICD10",
    "ICD9CM": "ICD9",
    "ICD9Proc": "ICD9",
    "RxNorm": "RXNORM",
    "ATC": "ATC",
    "OPCS4": "OPCS4",
    "dm+d": "DMD",
    "DMD": "DMD",
    "Read": "READ2",
}


class OmopSource:
    """The tables of one OMOP extract, read in chunks of ``chunk_rows`` (lower-cased column names).

    A DuckDB file is read over one read-only connection, opened at first use and kept by the source (opening one
    costs ~50 ms: a connection per table made Eunomia's read take a second); :meth:`close` (or the source's end)
    closes it."""

    def __init__(self, path: Path, *, chunk_rows: int = 200_000) -> None:
        self.path = path
        self.chunk_rows = chunk_rows
        self._duckdb: Any = None
        if not path.exists():
            raise ConnectorError(f"{path} does not exist", connector=SOURCE)
        if path.is_dir():
            self.kind = "files"
            self._files = {}
            for p in path.iterdir():
                name = p.name.lower()
                for suffix in (".parquet", ".csv", ".csv.gz"):
                    if name.endswith(suffix):
                        self._files[name[: -len(suffix)]] = p
        elif path.suffix.lower() == ".duckdb":
            self.kind = "duckdb"
        elif path.suffix.lower() in (".sqlite", ".sqlite3", ".db"):
            self.kind = "sqlite"
        else:
            raise ConnectorError(f"{path}: expected a directory, a .duckdb or a .sqlite file", connector=SOURCE)
        self._tables = {t.lower(): t for t in self._list_tables()}

    def _list_tables(self) -> list[str]:
        if self.kind == "files":
            return list(self._files)
        if self.kind == "duckdb":
            return [r[0] for r in self._con().execute("select table_name from information_schema.tables").fetchall()]
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as con:
            return [r[0] for r in con.execute("select name from sqlite_master where type in ('table','view')")]

    def _con(self) -> Any:
        """The source's DuckDB connection (read-only), opened at first use."""
        if self._duckdb is None:
            import duckdb

            self._duckdb = duckdb.connect(str(self.path), read_only=True)
        return self._duckdb

    def close(self) -> None:
        """Close the DuckDB connection, if one was opened (the source opens it again when used)."""
        if self._duckdb is not None:
            self._duckdb.close()
            self._duckdb = None

    def has(self, table: str) -> bool:
        return table in self._tables

    def count(self, table: str) -> int:
        if not self.has(table):
            return 0
        if self.kind == "files":
            return int(self._scan(table).select(pl.len()).collect().item())
        return int(self._query(f"select count(*) as n from {self._tables[table]}").item())

    def census(self, tables: tuple[str, ...]) -> dict[str, tuple[int, bool]]:
        """``{table: (rows, has a person_id column)}`` for the tables present, over one connection."""
        present = [t for t in tables if self.has(t)]
        if self.kind == "files":
            out = {}
            for t in present:
                lf = self._scan(t)
                out[t] = (int(lf.select(pl.len()).collect().item()), "person_id" in lf.collect_schema().names())
            return out
        sql = [
            f"select '{t}' as t, count(*) as n, "
            f"(select count(*) from ({self._columns_sql(t)}) c where lower(c.name) = 'person_id') as p "
            f"from {self._tables[t]}"
            for t in present
        ]
        if not sql:
            return {}
        rows = self._query(" union all ".join(sql)).rows()
        return {str(t): (int(n), bool(p)) for t, n, p in rows}

    def _columns_sql(self, table: str) -> str:
        name = self._tables[table]
        if self.kind == "duckdb":
            return f"select column_name as name from information_schema.columns where table_name = '{name}'"
        return f"select name from pragma_table_info('{name}')"

    def _scan(self, table: str) -> pl.LazyFrame:
        p = self._files[table]
        lf = (
            pl.scan_parquet(p)
            if p.name.lower().endswith(".parquet")
            else pl.scan_csv(p, infer_schema_length=10_000, try_parse_dates=True)
        )
        return lf.rename(lambda c: c.lower())

    def _query(self, sql: str) -> pl.DataFrame:
        if self.kind == "duckdb":
            con = self._con()
            rows = con.execute(sql).fetchall()
            names = [d[0] for d in con.description or []]
            return pl.DataFrame(rows, schema=names, orient="row")
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as con:
            return pl.read_database(sql, con)

    def chunks(self, table: str) -> Iterator[pl.DataFrame]:
        """The table in chunks (columns lower-cased). Nothing when the table is absent."""
        if not self.has(table):
            return
        if self.kind == "files":
            lf = self._scan(table)
            n = self.count(table)
            for offset in range(0, n, self.chunk_rows):
                yield lf.slice(offset, self.chunk_rows).collect()
            return
        if self.kind == "duckdb":
            yield from self._duckdb_chunks(self._tables[table])
            return
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as con:
            for df in pl.read_database(
                f"select * from {self._tables[table]}", con, iter_batches=True, batch_size=self.chunk_rows
            ):
                yield df.rename(lambda c: c.lower())

    def _duckdb_chunks(self, name: str) -> Iterator[pl.DataFrame]:
        """A DuckDB table in chunks of ``rowid`` ranges (in insertion order), handed to Polars through the Arrow
        C stream (no copy, no pyarrow); a view (no ``rowid``) is written to a local Parquet file and scanned in
        chunks."""
        import duckdb

        con = self._con()
        try:
            top = con.execute(f"select max(rowid) from {name}").fetchall()[0][0]
        except duckdb.BinderException:  # a view has no rowid
            yield from self._duckdb_view_chunks(name)
            return
        for start in range(0, -1 if top is None else int(top) + 1, self.chunk_rows):
            rel = con.sql(f"select * from {name} where rowid >= {start} and rowid < {start + self.chunk_rows}")
            df = pl.DataFrame(rel)
            if df.height:
                yield df.rename(lambda c: c.lower())

    def _duckdb_view_chunks(self, name: str) -> Iterator[pl.DataFrame]:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="screener-omop-") as tmp:
            out = Path(tmp) / "view.parquet"
            self._con().execute(f"COPY (SELECT * FROM {name}) TO '{out}' (FORMAT parquet)")
            lf = pl.scan_parquet(out).rename(lambda c: c.lower())
            n = int(lf.select(pl.len()).collect().item())
            for offset in range(0, n, self.chunk_rows):
                yield lf.slice(offset, self.chunk_rows).collect()

    def concepts(self) -> pl.DataFrame | None:
        """concept_id -> (system, value) for every concept, or None when there is no concept table."""
        if not self.has("concept"):
            return None
        df = self._concept_columns()
        if df.height == 0:
            return None
        df = df.select(
            pl.col("concept_id").cast(pl.Int64),
            pl.col("vocabulary_id").cast(pl.String),
            pl.col("concept_code").cast(pl.String),
        )
        vocab = pl.col("vocabulary_id")
        system = vocab.replace_strict(VOCABULARIES, default="local")
        value = pl.when(system == "local").then(vocab + ":" + pl.col("concept_code")).otherwise(pl.col("concept_code"))
        return df.select("concept_id", system.alias("c_system"), value.str.slice(0, 64).alias("c_value"))

    def _concept_columns(self) -> pl.DataFrame:
        """The concept table's three columns the mapping reads, read alone (a full vocabulary is millions of rows
        of names and dates that nothing here uses).

        :raises ConnectorError: naming the table and the column it lacks."""
        wanted = ("concept_id", "vocabulary_id", "concept_code")
        name = self._tables["concept"]
        if self.kind == "files":
            lf = self._scan("concept")
            have = set(lf.collect_schema().names())
        else:
            have = {str(n).lower() for n in self._query(self._columns_sql("concept"))["name"].to_list()}
        missing = [c for c in wanted if c not in have]
        if missing:
            raise ConnectorError(f"{self.path}: table {name} has no column {', '.join(missing)}", connector=SOURCE)
        if self.kind == "files":
            return lf.select(wanted).collect()
        sql = f"select {', '.join(wanted)} from {name}"
        if self.kind == "duckdb":
            return pl.DataFrame(self._con().sql(sql)).rename(lambda c: c.lower())
        return self._query(sql).rename(lambda c: c.lower())

    def present(self) -> list[str]:
        """The (lower-cased) names of every table in the extract."""
        return sorted(self._tables)

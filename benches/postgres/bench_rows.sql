-- The Postgres system benchmark's table: :n rows of 16 mixed columns, generated in one
-- INSERT … SELECT with deterministic pseudo-random values (the same :n gives the same table).
-- Run by scripts/bench-postgres.sh as `psql -v n=N -f benches/postgres/bench_rows.sql`.
--
-- Shape (as in shared/reference/ceilings.md): bigint key, 5 text of 10–30 characters (`note` is
-- NULL in 1 row of 8), int ×2, float8 ×2, numeric(12,2), timestamptz ×2, bool, jsonb of about
-- 55 characters, bigint. The primary key is added after the load; VACUUM ANALYZE sets the
-- visibility map and statistics so every reader starts from the same state.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
DROP TABLE IF EXISTS bench_rows;
CREATE TABLE bench_rows (
    id          bigint NOT NULL,
    name        text,
    email       text,
    city        text,
    category    text,
    note        text,
    quantity    integer,
    rank        integer,
    price       float8,
    ratio       float8,
    amount      numeric(12, 2),
    created_at  timestamptz,
    updated_at  timestamptz,
    active      boolean,
    attrs       jsonb,
    version     bigint
);
INSERT INTO bench_rows
SELECT
    i,
    substr(h, 1 + (r1 % 7)::int, 10 + (r1 % 21)::int),
    substr(h, 9 + (r2 % 5)::int, 10 + (r2 % 21)::int),
    substr(h, 17 + (r3 % 3)::int, 10 + (r3 % 21)::int),
    substr(h, 25, 10 + (r4 % 21)::int),
    CASE WHEN i % 8 = 0 THEN NULL ELSE substr(h, 33, 10 + (r5 % 21)::int) END,
    (r1 % 100000)::int,
    (r2 % 2000000000)::int - 1000000000,
    (r3 % 1000000)::float8 / 997.0,
    (r4 % 1000003)::float8 / 1000003.0,
    round((r5 % 1000000000)::numeric / 100, 2),
    timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => (r1 % 157680000)::float8),
    timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => (r2 % 31536000) + (r3 % 1000000)::float8 / 1000000),
    (r5 % 3) <> 0,
    jsonb_build_object('n', (r2 % 997)::int, 'sku', 'SKU-' || (r3 % 100000)::text,
                       'tags', jsonb_build_array(substr(h, 41, 4), substr(h, 45, 4))),
    r4 % 1000
FROM (
    SELECT
        i,
        md5(i::text) || md5((i # 12345)::text) AS h,
        (i * 2654435761) % 4294967291 AS r1,
        (i * 3266489917) % 2147483629 AS r2,
        (i * 2246822519) % 3266489917 AS r3,
        (i * 668265263) % 374761393 AS r4,
        (i * 1181783497) % 2870177450 AS r5
    FROM generate_series(1::bigint, :n::bigint) AS i
) AS g;
ALTER TABLE bench_rows ADD PRIMARY KEY (id);
VACUUM ANALYZE bench_rows;

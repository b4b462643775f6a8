-- bench/setup.sql -- tables and helpers of the benchmark suite (bench/run.sh),
-- run in database postgres of the private cluster that run.sh starts.
--
-- Every signal table has the same shape, (id bigserial, payload text), so
-- every message is the row as JSON, {"id":..,"payload":"xx..x"}, sent
-- persistent (delivery_mode 2, the default) to a durable queue through the
-- default exchange -- exactly what bench/raw_publish.c publishes.

\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- no checkpoint in the middle of a measurement: run.sh checkpoints before each
ALTER SYSTEM SET max_wal_size = '8GB';
ALTER SYSTEM SET checkpoint_timeout = '1h';
SELECT pg_reload_conf();

CREATE EXTENSION IF NOT EXISTS signalbus;

-- drain: one table per burst size, both sent to queue bench.drain
CREATE TABLE bench_b100 (id bigserial PRIMARY KEY, payload text NOT NULL);
CREATE TABLE bench_b1000 (id bigserial PRIMARY KEY, payload text NOT NULL);
SELECT signalbus_register('bench_b100', routing_key => 'bench.drain', burst_count => 100);
SELECT signalbus_register('bench_b1000', routing_key => 'bench.drain', burst_count => 1000);

-- commit path: a signal table and an identical ordinary table
CREATE TABLE bench_commit_signal (id bigserial PRIMARY KEY, payload text NOT NULL);
CREATE TABLE bench_commit_plain (id bigserial PRIMARY KEY, payload text NOT NULL);
SELECT signalbus_register('bench_commit_signal', routing_key => 'bench.commit');

-- latency
CREATE TABLE bench_latency (id bigserial PRIMARY KEY, payload text NOT NULL);
SELECT signalbus_register('bench_latency', routing_key => 'bench.latency');

-- bench_wait_sent: wait until this database's worker has sent (the broker
-- confirmed, the rows deleted and committed) target messages in all; returns
-- when, as epoch seconds.  signalbus_status reads shared memory: polling it
-- every 10 ms costs the worker nothing.  Commits between polls so that no
-- snapshot is held while the worker deletes.
CREATE PROCEDURE bench_wait_sent(target bigint, timeout_s float8,
                                 INOUT done_at float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    n        bigint;
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
BEGIN
    LOOP
        SELECT sent INTO n FROM signalbus_status WHERE database = current_database();
        IF n >= target THEN
            done_at := extract(epoch FROM clock_timestamp());
            RETURN;
        END IF;
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'bench: the worker sent % of % messages within % s',
                n, target, timeout_s;
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;

-- bench_wait_idle: wait until nothing is pending and the worker is idle
CREATE PROCEDURE bench_wait_idle(timeout_s float8)
LANGUAGE plpgsql AS $$
DECLARE
    p        bigint;
    s        text;
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
BEGIN
    LOOP
        SELECT coalesce(sum(pending), 0) INTO p FROM signalbus_pending;
        SELECT state INTO s FROM signalbus_status WHERE database = current_database();
        EXIT WHEN p = 0 AND s = 'idle';
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'bench: % rows still pending (worker %) after % s',
                p, s, timeout_s;
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;

--
-- The views signalbus_signals, signalbus_pending, signalbus_status, and the
-- configuration parameters.
--
-- Rows are counted only inside open transactions: the database's worker
-- sweeps every registered table every second and could send (and delete)
-- committed rows at any moment, but it cannot see uncommitted ones.
--
\set SHOW_CONTEXT never

--
-- the columns DESIGN.md promises (more may exist)
--
SELECT v.view, v.col, format_type(a.atttypid, a.atttypmod) AS type
  FROM (VALUES ('signalbus_signals',  1, 'signal'),
               ('signalbus_signals',  2, 'exchange'),
               ('signalbus_signals',  3, 'routing_key'),
               ('signalbus_signals',  4, 'autoflush'),
               ('signalbus_signals',  5, 'order_by'),
               ('signalbus_signals',  6, 'burst_count'),
               ('signalbus_signals',  7, 'mandatory'),
               ('signalbus_pending',  1, 'signal'),
               ('signalbus_pending',  2, 'pending'),
               ('signalbus_status',   1, 'database'),
               ('signalbus_status',   2, 'pid'),
               ('signalbus_status',   3, 'state'),
               ('signalbus_status',   4, 'broker'),
               ('signalbus_status',   5, 'sent'),
               ('signalbus_status',   6, 'failed'),
               ('signalbus_status',   7, 'last_error'),
               ('signalbus_status',   8, 'last_error_at'),
               ('signalbus_status',   9, 'last_sent_at')) AS v(view, n, col)
  LEFT JOIN pg_attribute a
         ON a.attrelid = v.view::regclass AND a.attname = v.col AND NOT a.attisdropped
 ORDER BY v.view, v.n;

-- everybody may read the views
SELECT c.relname,
       has_table_privilege('public', c.oid, 'SELECT') AS public_select
  FROM pg_class c
 WHERE c.relname IN ('signalbus_signals', 'signalbus_pending', 'signalbus_status')
 ORDER BY c.relname;

--
-- signalbus_signals
--
CREATE TABLE sig_a (id bigserial PRIMARY KEY, v text);
CREATE TABLE sig_b (id bigserial PRIMARY KEY, v text);
CREATE TABLE not_a_signal (id int PRIMARY KEY);
SELECT signalbus_register('sig_a');
SELECT signalbus_register('sig_b', exchange => 'amq.topic', routing_key => 'b.key',
                          autoflush => false, order_by => 'id', burst_count => 7,
                          mandatory => true);
SELECT * FROM signalbus_signals ORDER BY signal::text;

--
-- signalbus_pending
--
-- empty tables (nobody inserts into them outside a transaction)
SELECT * FROM signalbus_pending ORDER BY signal::text;
-- rows inserted by this transaction are counted; unregistered tables are not
BEGIN;
INSERT INTO sig_a (v) SELECT 'a' || i FROM generate_series(1, 3) i;
INSERT INTO sig_b (v) SELECT 'b' || i FROM generate_series(1, 5) i;
INSERT INTO not_a_signal VALUES (1);
SELECT * FROM signalbus_pending ORDER BY signal::text;
-- a table registered in this transaction, with rows from before
CREATE TABLE sig_c (id int PRIMARY KEY);
INSERT INTO sig_c SELECT generate_series(1, 4);
SELECT signalbus_register('sig_c');
SELECT * FROM signalbus_pending ORDER BY signal::text;
SELECT signalbus_unregister('sig_b');
SELECT * FROM signalbus_pending ORDER BY signal::text;
ROLLBACK;
SELECT * FROM signalbus_pending ORDER BY signal::text;

-- a table the current user may not SELECT shows pending NULL
CREATE ROLE regress_signalbus_viewer;
GRANT SELECT ON sig_a TO regress_signalbus_viewer;
BEGIN;
INSERT INTO sig_a (v) VALUES ('x'), ('y');
INSERT INTO sig_b (v) VALUES ('x');
SET LOCAL ROLE regress_signalbus_viewer;
SELECT * FROM signalbus_pending ORDER BY signal::text;
-- signalbus_signals is readable by everybody
SELECT signal, routing_key FROM signalbus_signals ORDER BY signal::text;
ROLLBACK;

-- so does a table in a schema the user has no USAGE on (not an error for
-- the whole view)
CREATE SCHEMA regress_signalbus_hidden;
CREATE TABLE regress_signalbus_hidden.sig_hidden (id int PRIMARY KEY);
GRANT SELECT ON regress_signalbus_hidden.sig_hidden TO regress_signalbus_viewer;
SELECT signalbus_register('regress_signalbus_hidden.sig_hidden');
SET ROLE regress_signalbus_viewer;
SELECT * FROM signalbus_pending ORDER BY signal::text;
RESET ROLE;
SELECT signalbus_unregister('regress_signalbus_hidden.sig_hidden');
DROP SCHEMA regress_signalbus_hidden CASCADE;

--
-- signalbus_status: one row per worker.  Its values change all the time;
-- only stable facts are shown.  First wait (up to 60 s) for this
-- database's worker: the launcher looks for a new database every 10 s.
--
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN EXISTS (SELECT FROM signalbus_status
                           WHERE database = current_database() AND pid IS NOT NULL);
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT database = current_database() AS this_database,
       pid IS NOT NULL AS has_pid,
       state IN ('waiting for extension', 'connecting', 'idle', 'sending', 'backoff') AS known_state,
       -- amqp://user@host:port/vhost: the configured URL without its password
       broker = regexp_replace(current_setting('signalbus.amqp_url'),
                               '^(amqps?://[^:@/]*):[^@/]*@', '\1@') AS broker_shown,
       sent >= 0 AS sent, failed >= 0 AS failed
  FROM signalbus_status
 WHERE database = current_database();
SELECT count(*) > 0 AS has_rows,
       count(*) FILTER (WHERE state IS NULL) AS null_states,
       count(*) FILTER (WHERE broker LIKE '%:guest@%' OR broker LIKE '%:%:%@%') AS passwords_shown
  FROM signalbus_status;
-- and to a user without any privileges
SET ROLE regress_signalbus_viewer;
SELECT count(*) > 0 AS has_rows,
       count(*) FILTER (WHERE broker LIKE '%:guest@%' OR broker LIKE '%:%:%@%') AS passwords_shown
  FROM signalbus_status;
RESET ROLE;

--
-- configuration parameters
--
-- (more may be added: only those named in DESIGN.md, and queue_size and
-- max_backoff, are listed)
SELECT name, unit, context, vartype, boot_val, min_val, max_val
  FROM pg_settings
 WHERE name IN ('signalbus.amqp_url', 'signalbus.databases', 'signalbus.autoflush',
                'signalbus.flush_interval', 'signalbus.max_attempts',
                'signalbus.confirm_timeout', 'signalbus.queue_size',
                'signalbus.max_backoff')
 ORDER BY name;
-- every one is described
SELECT name FROM pg_settings
 WHERE name LIKE 'signalbus.%' AND coalesce(short_desc, '') = '';
-- the harness (scripts/pg.sh) sets signalbus.databases and flush_interval
SHOW signalbus.databases;
SHOW signalbus.autoflush;
SHOW signalbus.flush_interval;
SHOW signalbus.max_attempts;
SHOW signalbus.confirm_timeout;
SHOW signalbus.queue_size;
SHOW signalbus.max_backoff;
-- a superuser and members of pg_read_all_settings may read the broker URL
SELECT current_setting('signalbus.amqp_url') LIKE 'amqp://%' AS readable;
CREATE ROLE regress_signalbus_settings IN ROLE pg_read_all_settings;
SET ROLE regress_signalbus_settings;
SELECT current_setting('signalbus.amqp_url') LIKE 'amqp://%' AS readable;
RESET ROLE;
-- everybody else may read the other settings, and set signalbus.autoflush
SET ROLE regress_signalbus_viewer;
SHOW signalbus.autoflush;
SHOW signalbus.max_attempts;
SET signalbus.autoflush = off;
SHOW signalbus.autoflush;
RESET signalbus.autoflush;
SHOW signalbus.autoflush;
BEGIN;
SET LOCAL signalbus.autoflush TO false;
SHOW signalbus.autoflush;
COMMIT;
SHOW signalbus.autoflush;
-- the broker URL is hidden from pg_settings, the others are not
SELECT v.name
  FROM (VALUES ('signalbus.amqp_url'), ('signalbus.databases'), ('signalbus.autoflush'),
               ('signalbus.flush_interval'), ('signalbus.max_attempts'),
               ('signalbus.confirm_timeout'), ('signalbus.queue_size'),
               ('signalbus.max_backoff')) AS v(name)
 WHERE NOT EXISTS (SELECT FROM pg_settings s WHERE s.name = v.name);
RESET ROLE;

--
-- clean up
--
DROP TABLE sig_a, sig_b, not_a_signal;
DROP ROLE regress_signalbus_viewer;
DROP ROLE regress_signalbus_settings;
SELECT count(*) FROM signalbus_signals;

--
-- The extension works in whatever schema it is created in.  This file drops
-- and recreates the extension, so it runs last; it leaves the extension as
-- it found it (created in public, nothing registered).
--
\set SHOW_CONTEXT never

-- DROP EXTENSION refuses while a table is registered (its trigger depends
-- on the extension's trigger function)
CREATE TABLE sig_outer (id int PRIMARY KEY);
SELECT signalbus_register('sig_outer');
DROP EXTENSION signalbus; \echo :SQLSTATE
SELECT signalbus_unregister('sig_outer');
DROP EXTENSION signalbus;

CREATE SCHEMA sb;
CREATE EXTENSION signalbus SCHEMA sb;
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'signalbus';
-- everything lives in sb
SELECT pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'signalbus')
   AND classid IN ('pg_class'::regclass, 'pg_proc'::regclass)
   AND pg_describe_object(classid, objid, objsubid) NOT LIKE '%sb.%'
 ORDER BY 1;
SELECT count(*) > 0 AS has_objects
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'signalbus');

-- sb is not on the search_path: everything is called schema-qualified
SHOW search_path;
SELECT to_regproc('signalbus_register') IS NULL AS not_on_path;
CREATE TABLE sig_outer2 (id bigserial PRIMARY KEY, v text, created_at timestamptz);
SELECT sb.signalbus_register('sig_outer', routing_key => 'outer');
SELECT sb.signalbus_register('sig_outer2', order_by => 'created_at, id DESC');
SELECT * FROM sb.signalbus_signals ORDER BY signal::text;
SELECT tgname, tgfoid::regprocedure AS function
  FROM pg_trigger WHERE tgrelid IN ('sig_outer'::regclass, 'sig_outer2'::regclass)
 ORDER BY tgrelid::regclass::text;
-- errors come from the same checks
SELECT sb.signalbus_register('sig_outer2', order_by => 'id + 1'); \echo :SQLSTATE
SELECT sb.signalbus_unregister('sb.signalbus_dead_letters'); \echo :SQLSTATE

-- pending counts and flushing (rows inserted by this transaction: the
-- worker cannot see them, and signalbus_flush does not send them)
BEGIN;
INSERT INTO sig_outer SELECT generate_series(1, 2);
INSERT INTO sig_outer2 (v) VALUES ('x');
SELECT * FROM sb.signalbus_pending ORDER BY signal::text;
SELECT sb.signalbus_flush('sig_outer');
SELECT sb.signalbus_flush();
ROLLBACK;

-- the worker finds the extension in sb too
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN EXISTS (SELECT FROM sb.signalbus_status
                           WHERE database = current_database() AND pid IS NOT NULL
                             AND state <> 'waiting for extension');
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT state IN ('connecting', 'idle', 'sending', 'backoff') AS serving
  FROM sb.signalbus_status WHERE database = current_database();

-- DROP TABLE removes the registration (the event trigger finds sb too)
DROP TABLE sig_outer2;
SELECT signal, routing_key FROM sb.signalbus_signals ORDER BY signal::text;
SELECT sb.signalbus_unregister('sig_outer');
SELECT count(*) FROM sb.signalbus_signals;

-- DROP EXTENSION ... CASCADE removes the triggers, keeps the tables
SELECT sb.signalbus_register('sig_outer');
DROP EXTENSION signalbus CASCADE;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sig_outer'::regclass;
SELECT count(*) FROM sig_outer;
DROP SCHEMA sb;

-- back to where the other files left it
CREATE EXTENSION signalbus;
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'signalbus';
DROP TABLE sig_outer;
SELECT count(*) FROM signalbus_signals;

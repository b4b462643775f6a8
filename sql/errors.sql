--
-- Bad input to every SQL function: a proper SQLSTATE (printed after each
-- failing statement by "\echo :SQLSTATE"), a message in PostgreSQL's style,
-- and nothing changed.
--
\set SHOW_CONTEXT never
CREATE ROLE regress_signalbus_owner;
CREATE ROLE regress_signalbus_member IN ROLE regress_signalbus_owner;
CREATE ROLE regress_signalbus_other;
CREATE TABLE sig (id int PRIMARY KEY, created_at timestamptz, "Weird Col" text);
CREATE TABLE plain (id int PRIMARY KEY);

--
-- a missing table fails as a regclass cast fails
--
SELECT signalbus_register('no_such_table'); \echo :SQLSTATE
SELECT signalbus_register('public.no_such_table'); \echo :SQLSTATE
SELECT signalbus_unregister('no_such_table'); \echo :SQLSTATE
SELECT signalbus_flush('no_such_table'); \echo :SQLSTATE
-- an OID that names no relation
SELECT signalbus_register(0); \echo :SQLSTATE
SELECT signalbus_register(4294967295); \echo :SQLSTATE
SELECT signalbus_unregister(4294967295); \echo :SQLSTATE
SELECT signalbus_flush(4294967295); \echo :SQLSTATE

--
-- NULL arguments
--
SELECT signalbus_register(NULL); \echo :SQLSTATE
SELECT signalbus_register('sig', autoflush => NULL); \echo :SQLSTATE
SELECT signalbus_register('sig', burst_count => NULL); \echo :SQLSTATE
SELECT signalbus_register('sig', mandatory => NULL); \echo :SQLSTATE
SELECT signalbus_unregister(NULL); \echo :SQLSTATE
SELECT count(*) FROM signalbus_signals;

--
-- option values out of range
--
SELECT signalbus_register('sig', burst_count => 0); \echo :SQLSTATE
SELECT signalbus_register('sig', burst_count => -1); \echo :SQLSTATE
SELECT signalbus_register('sig', burst_count => 100001); \echo :SQLSTATE
SELECT signalbus_register('sig', exchange => repeat('x', 256)); \echo :SQLSTATE
SELECT signalbus_register('sig', routing_key => repeat('x', 256)); \echo :SQLSTATE
SELECT count(*) FROM signalbus_signals;
-- the limits themselves are accepted
SELECT signalbus_register('sig', exchange => repeat('x', 255), routing_key => repeat('y', 255),
                          burst_count => 100000);
SELECT length(exchange), length(routing_key), burst_count FROM signalbus_signals;
SELECT signalbus_register('sig', burst_count => 1);
SELECT burst_count FROM signalbus_signals;
SELECT signalbus_unregister('sig');

--
-- a table without a primary key
--
CREATE TABLE no_pk (id int UNIQUE NOT NULL);
SELECT signalbus_register('no_pk'); \echo :SQLSTATE

--
-- special columns of the wrong type
--
CREATE TABLE bad_priority (id int PRIMARY KEY, priority text);
SELECT signalbus_register('bad_priority'); \echo :SQLSTATE
CREATE TABLE bad_headers (id int PRIMARY KEY, headers json);
SELECT signalbus_register('bad_headers'); \echo :SQLSTATE
CREATE TABLE bad_body (id int PRIMARY KEY, body integer);
SELECT signalbus_register('bad_body'); \echo :SQLSTATE
CREATE TABLE bad_timestamp (id int PRIMARY KEY, "timestamp" timestamp);
SELECT signalbus_register('bad_timestamp'); \echo :SQLSTATE
CREATE TABLE bad_delivery_mode (id int PRIMARY KEY, delivery_mode bigint);
SELECT signalbus_register('bad_delivery_mode'); \echo :SQLSTATE
CREATE TABLE bad_routing_key (id int PRIMARY KEY, routing_key text[]);
SELECT signalbus_register('bad_routing_key'); \echo :SQLSTATE
CREATE TABLE bad_exchange (id int PRIMARY KEY, exchange name);
SELECT signalbus_register('bad_exchange'); \echo :SQLSTATE
CREATE TABLE bad_message_id (id int PRIMARY KEY, message_id uuid);
SELECT signalbus_register('bad_message_id'); \echo :SQLSTATE
-- a special column re-added with a wrong type after a drop
CREATE TABLE bad_readded (id int PRIMARY KEY, priority int);
ALTER TABLE bad_readded DROP COLUMN priority;
ALTER TABLE bad_readded ADD COLUMN priority numeric;
SELECT signalbus_register('bad_readded'); \echo :SQLSTATE
-- refused registrations leave nothing behind
SELECT count(*) FROM signalbus_signals;
SELECT count(*) FROM pg_trigger WHERE tgname = 'signalbus';

--
-- relations that are not ordinary tables, and temporary tables
--
CREATE TEMP TABLE temp_sig (id int PRIMARY KEY);
SELECT signalbus_register('temp_sig'); \echo :SQLSTATE
CREATE VIEW view_sig AS SELECT 1 AS id;
SELECT signalbus_register('view_sig'); \echo :SQLSTATE
SELECT signalbus_unregister('view_sig'); \echo :SQLSTATE
CREATE MATERIALIZED VIEW matview_sig AS SELECT 1 AS id;
SELECT signalbus_register('matview_sig'); \echo :SQLSTATE
CREATE SEQUENCE seq_sig;
SELECT signalbus_register('seq_sig'); \echo :SQLSTATE
CREATE TABLE parted_sig (id int PRIMARY KEY) PARTITION BY RANGE (id);
SELECT signalbus_register('parted_sig'); \echo :SQLSTATE
SELECT signalbus_register('sig_pkey'); \echo :SQLSTATE
SELECT count(*) FROM signalbus_signals;

--
-- order_by: columns of the table, ASC/DESC, NULLS FIRST/LAST; nothing else
--
SELECT signalbus_register('sig', order_by => 'no_such_column'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id, nope DESC'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'weird col'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => '"weird col"'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'ctid'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id + 1'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id; DROP TABLE plain'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id) --'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'lower("Weird Col")'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id USING <'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id COLLATE "C"'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id NULLS'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id NULLS sometimes'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id,'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => ',id'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => '"id'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => ''); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => '   '); \echo :SQLSTATE
SELECT count(*) FROM signalbus_signals;
-- modifiers twice or in the wrong order are not a valid ORDER BY either
-- (only the SQLSTATE is shown: the wording is the implementer's choice)
\set VERBOSITY sqlstate
SELECT signalbus_register('sig', order_by => 'id ASC DESC'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id DESC DESC'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id NULLS FIRST DESC'); \echo :SQLSTATE
SELECT signalbus_register('sig', order_by => 'id NULLS LAST NULLS FIRST'); \echo :SQLSTATE
\set VERBOSITY default
SELECT count(*) FROM signalbus_signals;

--
-- ownership: only the owner, members of the owning role, or a superuser
--
ALTER TABLE sig OWNER TO regress_signalbus_owner;
SET ROLE regress_signalbus_other;
SELECT signalbus_register('sig'); \echo :SQLSTATE
RESET ROLE;
SET ROLE regress_signalbus_member;
SELECT signalbus_register('sig');
RESET ROLE;
SET ROLE regress_signalbus_other;
SELECT signalbus_unregister('sig'); \echo :SQLSTATE
-- even with every privilege on the table
RESET ROLE;
GRANT ALL ON sig TO regress_signalbus_other;
SET ROLE regress_signalbus_other;
SELECT signalbus_register('sig', routing_key => 'hijacked'); \echo :SQLSTATE
SELECT signalbus_unregister('sig'); \echo :SQLSTATE
-- the catalog cannot be written directly
INSERT INTO signalbus_registrations (signal) VALUES ('plain'); \echo :SQLSTATE
UPDATE signalbus_registrations SET routing_key = 'hijacked'; \echo :SQLSTATE
DELETE FROM signalbus_registrations; \echo :SQLSTATE
RESET ROLE;
SELECT signal, routing_key FROM signalbus_signals;
SELECT signalbus_unregister('sig');
REVOKE ALL ON sig FROM regress_signalbus_other;

-- signalbus_register and signalbus_unregister write the catalog with the
-- extension owner's rights: a caller's own operators, put first on the
-- search_path, must never run with those rights
CREATE ROLE regress_signalbus_mallory;
CREATE SCHEMA regress_signalbus_mallory AUTHORIZATION regress_signalbus_mallory;
SET ROLE regress_signalbus_mallory;
CREATE TABLE regress_signalbus_mallory.sig_m (id int PRIMARY KEY);
CREATE FUNCTION regress_signalbus_mallory.spy() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r
         WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) THEN
        RAISE NOTICE 'a caller''s operator runs with superuser rights';
    END IF;
    RETURN true;
END
$$;
CREATE FUNCTION regress_signalbus_mallory.eq(oid, oid) RETURNS boolean LANGUAGE sql
    AS 'SELECT regress_signalbus_mallory.spy() AND $1 OPERATOR(pg_catalog.=) $2';
CREATE FUNCTION regress_signalbus_mallory.eq(regclass, regclass) RETURNS boolean LANGUAGE sql
    AS 'SELECT regress_signalbus_mallory.spy() AND $1 OPERATOR(pg_catalog.=) $2';
CREATE FUNCTION regress_signalbus_mallory.eq(name, name) RETURNS boolean LANGUAGE sql
    AS 'SELECT regress_signalbus_mallory.spy() AND $1 OPERATOR(pg_catalog.=) $2';
CREATE FUNCTION regress_signalbus_mallory.eq(text, text) RETURNS boolean LANGUAGE sql
    AS 'SELECT regress_signalbus_mallory.spy() AND $1 OPERATOR(pg_catalog.=) $2';
CREATE OPERATOR regress_signalbus_mallory.= (LEFTARG = oid, RIGHTARG = oid,
    FUNCTION = regress_signalbus_mallory.eq);
CREATE OPERATOR regress_signalbus_mallory.= (LEFTARG = regclass, RIGHTARG = regclass,
    FUNCTION = regress_signalbus_mallory.eq);
CREATE OPERATOR regress_signalbus_mallory.= (LEFTARG = name, RIGHTARG = name,
    FUNCTION = regress_signalbus_mallory.eq);
CREATE OPERATOR regress_signalbus_mallory.= (LEFTARG = text, RIGHTARG = text,
    FUNCTION = regress_signalbus_mallory.eq);
SET search_path = regress_signalbus_mallory, pg_catalog, public;
SELECT signalbus_register('sig_m', routing_key => 'm');
SELECT signalbus_register('sig_m', order_by => 'id');
SELECT signalbus_unregister('sig_m');
SELECT signalbus_unregister('sig_m'); \echo :SQLSTATE
RESET search_path;
RESET ROLE;
DROP SCHEMA regress_signalbus_mallory CASCADE;
DROP ROLE regress_signalbus_mallory;

--
-- unregister of a table that is not a signal table
--
SELECT signalbus_unregister('plain'); \echo :SQLSTATE
SELECT signalbus_register('plain');
SELECT signalbus_unregister('plain');
SELECT signalbus_unregister('plain'); \echo :SQLSTATE

--
-- configuration parameters
--
-- the broker URL is for superusers (and pg_read_all_settings) only
SET ROLE regress_signalbus_other;
SHOW signalbus.amqp_url; \echo :SQLSTATE
SELECT current_setting('signalbus.amqp_url'); \echo :SQLSTATE
RESET ROLE;
-- sighup and postmaster parameters cannot be SET, not even by a superuser
SET signalbus.amqp_url = 'not a url'; \echo :SQLSTATE
SET signalbus.amqp_url = 'amqp://guest:guest@localhost:5672/%2f'; \echo :SQLSTATE
SET signalbus.flush_interval = '50ms'; \echo :SQLSTATE
SET signalbus.flush_interval = '2s'; \echo :SQLSTATE
SET signalbus.max_attempts = 3; \echo :SQLSTATE
SET signalbus.confirm_timeout = '5s'; \echo :SQLSTATE
SET signalbus.max_backoff = '10s'; \echo :SQLSTATE
SET signalbus.databases = 'postgres'; \echo :SQLSTATE
SET signalbus.queue_size = 1024; \echo :SQLSTATE
SELECT set_config('signalbus.flush_interval', '2s', false); \echo :SQLSTATE
-- ALTER SYSTEM checks the values (and writes nothing when they are bad)
ALTER SYSTEM SET signalbus.amqp_url = 'not a url'; \echo :SQLSTATE
ALTER SYSTEM SET signalbus.flush_interval = '50ms'; \echo :SQLSTATE
ALTER SYSTEM SET signalbus.flush_interval = '2h'; \echo :SQLSTATE
ALTER SYSTEM SET signalbus.flush_interval = 0; \echo :SQLSTATE
ALTER SYSTEM SET signalbus.max_attempts = 0; \echo :SQLSTATE
ALTER SYSTEM SET signalbus.confirm_timeout = '10ms'; \echo :SQLSTATE
ALTER SYSTEM SET signalbus.autoflush = 'maybe'; \echo :SQLSTATE
SELECT count(*) FROM pg_file_settings
 WHERE name LIKE 'signalbus.%' AND sourcefile LIKE '%postgresql.auto.conf';
-- the prefix is reserved
SET signalbus.no_such_parameter = 1; \echo :SQLSTATE
-- a user parameter takes only booleans
SET signalbus.autoflush = 'maybe'; \echo :SQLSTATE

--
-- signalbus_flush
--
-- a table that is not a signal table
SELECT signalbus_flush('plain'); \echo :SQLSTATE
SELECT signalbus_flushordered('plain'); \echo :SQLSTATE
CALL signalbus_flushmany('plain'); \echo :SQLSTATE
SELECT signalbus_flushordered('no_such_table'); \echo :SQLSTATE
CALL signalbus_flushmany('no_such_table'); \echo :SQLSTATE
-- signalbus_flushmany commits: not inside a transaction block
BEGIN;
CALL signalbus_flushmany(); \echo :SQLSTATE
ROLLBACK;
BEGIN;
CALL signalbus_flushmany('plain'); \echo :SQLSTATE
ROLLBACK;
-- sending needs SELECT and DELETE on the table
SELECT signalbus_register('sig');
SET ROLE regress_signalbus_other;
SELECT signalbus_flush('sig'); \echo :SQLSTATE
SELECT signalbus_flushordered('sig'); \echo :SQLSTATE
CALL signalbus_flushmany('sig'); \echo :SQLSTATE
RESET ROLE;
GRANT SELECT ON sig TO regress_signalbus_other;
SET ROLE regress_signalbus_other;
SELECT signalbus_flush('sig'); \echo :SQLSTATE
RESET ROLE;
REVOKE SELECT ON sig FROM regress_signalbus_other;
GRANT DELETE ON sig TO regress_signalbus_other;
SET ROLE regress_signalbus_other;
SELECT signalbus_flush('sig'); \echo :SQLSTATE
-- flushing every table skips the tables the caller may not flush: here all
SELECT signalbus_flush();
SELECT signalbus_flush(NULL);
SELECT signalbus_flushordered();
CALL signalbus_flushmany();
RESET ROLE;
REVOKE DELETE ON sig FROM regress_signalbus_other;
SELECT signalbus_unregister('sig');

-- with nothing registered, signalbus_flush() returns 0 without a broker.
-- Point the broker URL (cluster-wide: ALTER SYSTEM and a reload) at a port
-- where nothing listens, for a few statements; then restore it.
ALTER SYSTEM SET signalbus.amqp_url = 'amqp://guest:guest@127.0.0.1:1/%2f';
SELECT pg_reload_conf();
SELECT pg_sleep(1);
SELECT current_setting('signalbus.amqp_url') = 'amqp://guest:guest@127.0.0.1:1/%2f' AS unreachable_url;
SELECT count(*) FROM signalbus_signals;
SELECT signalbus_flush();
SELECT signalbus_flush(NULL);
SELECT signalbus_flushordered();
CALL signalbus_flushmany();
-- a registered table needs the broker even when it has nothing to send
CREATE TABLE flush_me (id int PRIMARY KEY);
SELECT signalbus_register('flush_me');
-- (08001; the message names the broker without its password, and says why)
DO $$
BEGIN
    PERFORM signalbus_flush('flush_me');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '% %', SQLSTATE, regexp_replace(SQLERRM, '^(.*%2f): .*$', '\1: ...');
    RAISE NOTICE 'says connection refused: %', SQLERRM ~* 'connection refused';
END
$$;
DO $$
BEGIN
    PERFORM signalbus_flush();
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '% %', SQLSTATE, regexp_replace(SQLERRM, '^(.*%2f): .*$', '\1: ...');
END
$$;
DO $$
BEGIN
    PERFORM signalbus_flushordered('flush_me');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '% %', SQLSTATE, regexp_replace(SQLERRM, '^(.*%2f): .*$', '\1: ...');
END
$$;
\set VERBOSITY sqlstate
CALL signalbus_flushmany('flush_me'); \echo :SQLSTATE
\set VERBOSITY default
SELECT count(*) FROM flush_me;
SELECT signalbus_unregister('flush_me');
ALTER SYSTEM RESET signalbus.amqp_url;
SELECT pg_reload_conf();
SELECT pg_sleep(1);
SELECT current_setting('signalbus.amqp_url') <> 'amqp://guest:guest@127.0.0.1:1/%2f' AS restored;
SELECT count(*) FROM pg_file_settings
 WHERE name LIKE 'signalbus.%' AND sourcefile LIKE '%postgresql.auto.conf';

-- with the broker: a flush never sends rows inserted by its own transaction
BEGIN;
SELECT signalbus_register('flush_me');
INSERT INTO flush_me SELECT generate_series(1, 3);
SELECT signalbus_flush('flush_me');
SELECT signalbus_flush();
SELECT signalbus_flushordered('flush_me');
SELECT signalbus_flushordered();
SELECT count(*) FROM flush_me;
ROLLBACK;
-- SELECT and DELETE are enough (no ownership, no UPDATE)
SELECT signalbus_register('flush_me');
GRANT SELECT, DELETE ON flush_me TO regress_signalbus_other;
SET ROLE regress_signalbus_other;
SELECT signalbus_flush('flush_me');
SELECT signalbus_flush();
SELECT signalbus_flushordered('flush_me');
-- (its closing NOTICE shows a rate: not shown here)
SET client_min_messages = warning;
CALL signalbus_flushmany('flush_me');
RESET client_min_messages;
RESET ROLE;
SELECT signalbus_unregister('flush_me');
SELECT count(*) FROM signalbus_signals;

--
-- clean up
--
DROP TABLE sig, plain, no_pk, bad_priority, bad_headers, bad_body, bad_timestamp,
           bad_delivery_mode, bad_routing_key, bad_exchange, bad_message_id, bad_readded,
           temp_sig, parted_sig, flush_me;
DROP VIEW view_sig;
DROP MATERIALIZED VIEW matview_sig;
DROP SEQUENCE seq_sig;
DROP ROLE regress_signalbus_member;
DROP ROLE regress_signalbus_owner;
DROP ROLE regress_signalbus_other;
SELECT count(*) FROM signalbus_signals;

--
-- signalbus_register / signalbus_unregister: the happy paths.
--
-- The database is served by a signalbus worker that sweeps every registered
-- table every signalbus.flush_interval, so this file never inserts rows into
-- a table whose registration is committed: the worker could send and delete
-- them at any moment.  Rows are only inserted into tables registered inside
-- the same, still open, transaction.
--
\set SHOW_CONTEXT never
CREATE EXTENSION signalbus;

-- the extension's tables are kept by pg_dump
SELECT c::regclass AS dumped
  FROM pg_extension, unnest(extconfig) AS c
 WHERE extname = 'signalbus' ORDER BY c::regclass::text;
-- signalbus_dead_letters has the columns DESIGN.md names
SELECT attname, format_type(atttypid, atttypmod) AS type
  FROM pg_attribute
 WHERE attrelid = 'signalbus_dead_letters'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;

-- the binding SQL interface (DESIGN.md section 2)
SELECT p.oid::regprocedure AS function, p.prokind,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p
 WHERE p.proname IN ('signalbus_register', 'signalbus_unregister', 'signalbus_flush',
                     'signalbus_flushordered', 'signalbus_flushmany')
 ORDER BY p.proname;

--
-- register, re-register, unregister
--
CREATE TABLE sig_basic (id bigserial PRIMARY KEY, payload text, created_at timestamptz);
SELECT signalbus_register('sig_basic');
SELECT * FROM signalbus_signals ORDER BY signal::text;
-- the trigger named signalbus: AFTER INSERT ... FOR EACH ROW
SELECT tgname, tgfoid::regproc AS function, tgenabled, tgisinternal,
       pg_get_triggerdef(oid) LIKE 'CREATE TRIGGER signalbus AFTER INSERT ON public.sig_basic FOR EACH ROW EXECUTE FUNCTION signalbus_trigger(%)' AS after_insert_row
  FROM pg_trigger WHERE tgrelid = 'sig_basic'::regclass;

-- registering again updates the options (and keeps one trigger)
SELECT signalbus_register('sig_basic', exchange => 'amq.topic', routing_key => 'rk.basic',
                          autoflush => false, order_by => 'created_at, id DESC',
                          burst_count => 10, mandatory => true);
SELECT * FROM signalbus_signals ORDER BY signal::text;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'sig_basic'::regclass;
-- positional arguments
SELECT signalbus_register('sig_basic', 'amq.direct', 'rk2', true, 'id', 500, false);
SELECT * FROM signalbus_signals ORDER BY signal::text;
-- again with only the table: every option back to its default
SELECT signalbus_register('sig_basic');
SELECT * FROM signalbus_signals ORDER BY signal::text;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'sig_basic'::regclass;

-- unregister: no registration, no trigger
SELECT signalbus_unregister('sig_basic');
SELECT count(*) FROM signalbus_signals;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sig_basic'::regclass;
-- register again after unregister
SELECT signalbus_register('sig_basic', routing_key => 'again');
SELECT signal, routing_key FROM signalbus_signals ORDER BY signal::text;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'sig_basic'::regclass;
SELECT signalbus_unregister('sig_basic');

-- unregister leaves the rows in the table.  A table never registered
-- outside this transaction: the worker cannot send its rows.
CREATE TABLE sig_keep (id int PRIMARY KEY, payload text);
BEGIN;
SELECT signalbus_register('sig_keep');
INSERT INTO sig_keep VALUES (1, 'a'), (2, 'b'), (3, 'c');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'sig_keep'::regclass;
SELECT signalbus_unregister('sig_keep');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sig_keep'::regclass;
COMMIT;
SELECT * FROM sig_keep ORDER BY id;
SELECT count(*) FROM signalbus_signals;

--
-- order_by: a list of the table's own columns, normalized
--
CREATE TABLE sig_order (id int PRIMARY KEY, created_at timestamptz, "Weird Col" text,
                        "CamelCase" int, "order" int);
SELECT signalbus_register('sig_order', order_by => 'id');
SELECT order_by FROM signalbus_signals WHERE signal = 'sig_order'::regclass;
SELECT signalbus_register('sig_order', order_by => 'created_at, id DESC');
SELECT order_by FROM signalbus_signals WHERE signal = 'sig_order'::regclass;
SELECT signalbus_register('sig_order', order_by => '"Weird Col" asc nulls first');
SELECT order_by FROM signalbus_signals WHERE signal = 'sig_order'::regclass;
SELECT signalbus_register('sig_order', order_by => '  ID desc   NULLS   last ,created_at,"CamelCase" Asc  ');
SELECT order_by FROM signalbus_signals WHERE signal = 'sig_order'::regclass;
SELECT signalbus_register('sig_order', order_by => '"order" DESC, id nulls last');
SELECT order_by FROM signalbus_signals WHERE signal = 'sig_order'::regclass;
-- NULL: no order
SELECT signalbus_register('sig_order', order_by => NULL);
SELECT order_by IS NULL AS no_order FROM signalbus_signals WHERE signal = 'sig_order'::regclass;
SELECT signalbus_unregister('sig_order');

--
-- special columns of the right types are accepted
--
CREATE DOMAIN regress_signalbus_rk AS varchar(100);
CREATE TABLE sig_columns (
    id               int PRIMARY KEY,
    body             jsonb,
    headers          jsonb,
    exchange         text,
    routing_key      regress_signalbus_rk,
    content_type     varchar,
    content_encoding char(10),
    correlation_id   text,
    reply_to         text,
    expiration       text,
    message_id       text,
    type             text,
    user_id          text,
    app_id           text,
    delivery_mode    smallint,
    priority         integer,
    "timestamp"      timestamptz,
    "Body"           integer,       -- not special: names match exactly
    "PRIORITY"       text
);
SELECT signalbus_register('sig_columns');
CREATE TABLE sig_body_bytea (id int PRIMARY KEY, body bytea, delivery_mode integer, priority smallint);
SELECT signalbus_register('sig_body_bytea');
CREATE TABLE sig_body_json (id int PRIMARY KEY, body json);
SELECT signalbus_register('sig_body_json');
CREATE TABLE sig_body_text (id int PRIMARY KEY, body text);
SELECT signalbus_register('sig_body_text');
CREATE TABLE sig_body_char (id int PRIMARY KEY, body char(20));
SELECT signalbus_register('sig_body_char');
-- a dropped special column does not count
CREATE TABLE sig_dropped (id int PRIMARY KEY, priority text);
ALTER TABLE sig_dropped DROP COLUMN priority;
SELECT signalbus_register('sig_dropped');
SELECT signal FROM signalbus_signals ORDER BY signal::text;
SELECT signalbus_unregister(signal) FROM signalbus_signals ORDER BY signal::text;
SELECT count(*) FROM signalbus_signals;

--
-- other kinds of ordinary tables
--
-- quoted schema and table names
CREATE SCHEMA "Weird Schema";
CREATE TABLE "Weird Schema"."Weird Table" (id int PRIMARY KEY);
SELECT signalbus_register('"Weird Schema"."Weird Table"');
SELECT signal, routing_key FROM signalbus_signals;
SELECT tgname FROM pg_trigger WHERE tgrelid = '"Weird Schema"."Weird Table"'::regclass;
SELECT signalbus_unregister('"Weird Schema"."Weird Table"');
-- a multi-column primary key, an unlogged table
CREATE TABLE sig_pk2 (a int, b text, PRIMARY KEY (a, b));
SELECT signalbus_register('sig_pk2');
CREATE UNLOGGED TABLE sig_unlogged (id int PRIMARY KEY);
SELECT signalbus_register('sig_unlogged');
-- a partition (an ordinary table with a primary key)
CREATE TABLE sig_parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE sig_parted_1 PARTITION OF sig_parted FOR VALUES FROM (0) TO (100);
SELECT signalbus_register('sig_parted_1');
SELECT signal FROM signalbus_signals ORDER BY signal::text;
SELECT signalbus_unregister(signal) FROM signalbus_signals ORDER BY signal::text;

--
-- ownership: the owner and members of the owning role may register
--
CREATE ROLE regress_signalbus_owner;
CREATE ROLE regress_signalbus_member IN ROLE regress_signalbus_owner;
CREATE TABLE sig_owned (id int PRIMARY KEY);
ALTER TABLE sig_owned OWNER TO regress_signalbus_owner;
SET ROLE regress_signalbus_owner;
SELECT signalbus_register('sig_owned', routing_key => 'by owner');
SELECT signal, routing_key FROM signalbus_signals;
SELECT signalbus_unregister('sig_owned');
RESET ROLE;
SET ROLE regress_signalbus_member;
SELECT signalbus_register('sig_owned', routing_key => 'by member');
SELECT signal, routing_key FROM signalbus_signals;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'sig_owned'::regclass;
SELECT signalbus_unregister('sig_owned');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sig_owned'::regclass;
-- the owner may drop a registered table (the registration goes with it)
SELECT signalbus_register('sig_owned');
DROP TABLE sig_owned;
RESET ROLE;
SELECT count(*) FROM signalbus_signals;

--
-- DROP TABLE removes the registration; TRUNCATE keeps it
--
CREATE TABLE sig_drop (id int PRIMARY KEY, extra text);
CREATE TABLE sig_truncate (id int PRIMARY KEY);
SELECT signalbus_register('sig_drop');
SELECT signalbus_register('sig_truncate');
SELECT signal FROM signalbus_signals ORDER BY signal::text;
-- dropping a column is not dropping the table
ALTER TABLE sig_drop DROP COLUMN extra;
SELECT signal FROM signalbus_signals ORDER BY signal::text;
DROP TABLE sig_drop;
SELECT signal FROM signalbus_signals ORDER BY signal::text;
SELECT count(*) FROM signalbus_registrations;
TRUNCATE sig_truncate;
SELECT signal FROM signalbus_signals ORDER BY signal::text;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'sig_truncate'::regclass;
-- a dropped schema takes its signal tables' registrations with it
CREATE SCHEMA regress_signalbus_schema;
CREATE TABLE regress_signalbus_schema.sig_in_schema (id int PRIMARY KEY);
SELECT signalbus_register('regress_signalbus_schema.sig_in_schema');
SELECT signal FROM signalbus_signals ORDER BY signal::text;
DROP SCHEMA regress_signalbus_schema CASCADE;
SELECT signal FROM signalbus_signals ORDER BY signal::text;
-- a registration dropped in a rolled-back transaction is still there
BEGIN;
DROP TABLE sig_truncate;
SELECT count(*) FROM signalbus_signals;
ROLLBACK;
SELECT signal FROM signalbus_signals ORDER BY signal::text;
DROP TABLE sig_truncate;
SELECT count(*) FROM signalbus_signals;

--
-- clean up: nothing stays registered for the next files
--
DROP TABLE sig_basic, sig_keep, sig_order, sig_columns, sig_body_bytea, sig_body_json,
           sig_body_text, sig_body_char, sig_dropped, sig_pk2, sig_unlogged, sig_parted;
DROP DOMAIN regress_signalbus_rk;
DROP SCHEMA "Weird Schema" CASCADE;
DROP ROLE regress_signalbus_member;
DROP ROLE regress_signalbus_owner;
SELECT count(*) FROM signalbus_signals;
